//! Safetensors checkpoints read through mmap, by their Hugging Face names.
//!
//! Single files (`model.safetensors`) and sharded ones
//! (`model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`).
//! [`Weights::get_sharded`] reads only one rank's slice of a tensor, so a
//! tensor-parallel rank never holds the whole model.

use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use super::ModelError;

enum Bytes {
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Static(s) => s,
        }
    }
}

struct File {
    name: PathBuf,
    bytes: Bytes,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// A checkpoint: one or more safetensors files, indexed by tensor name.
pub struct Weights {
    files: Vec<File>,
    index: HashMap<String, usize>,
}

impl Weights {
    /// Open the checkpoint in `dir`: the sharded index when present, else `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Weights, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.exists() {
            shard_names(&index_path)?.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut files = Vec::new();
        for name in names {
            let handle = std::fs::File::open(&name).map_err(|e| ModelError::io(&name, e))?;
            // SAFETY: the checkpoint is treated as read-only for the life of the map.
            let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| ModelError::io(&name, e))?;
            files.push(File::parse(name, Bytes::Mapped(map))?);
        }
        Self::from_files(files)
    }

    /// A checkpoint compiled into the binary (the embedded demo model).
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Weights, ModelError> {
        Self::from_files(vec![File::parse(PathBuf::from(name), Bytes::Static(bytes))?])
    }

    fn from_files(files: Vec<File>) -> Result<Weights, ModelError> {
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.tensors.keys() {
                index.insert(name.clone(), i);
            }
        }
        Ok(Weights { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<(&File, &TensorInfo), ModelError> {
        let file = &self.files[*self.index.get(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?];
        let info = file.tensors.get(name).expect("index names a tensor its file lacks: this is a bug");
        Ok((file, info))
    }

    /// Shape of a stored tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<i64>, ModelError> {
        Ok(self.info(name)?.1.shape.iter().map(|&d| d as i64).collect())
    }

    /// The whole tensor `name`, checked against `shape`, as `kind` on `device`.
    pub fn get(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, ModelError> {
        self.get_sharded(name, shape, 0, 0, 1, kind, device)
    }

    /// Rank `rank` of `world` equal slices of `name` along `dim`. `full_shape` is
    /// the unsharded shape the config implies; only the slice's bytes are copied.
    #[allow(clippy::too_many_arguments)]
    pub fn get_sharded(
        &self,
        name: &str,
        full_shape: &[i64],
        dim: usize,
        rank: usize,
        world: usize,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, ModelError> {
        let size = *full_shape.get(dim).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            message: format!("has no dimension {dim} to shard"),
        })?;
        let world = world.max(1) as i64;
        if size % world != 0 {
            return Err(ModelError::Tensor {
                name: name.into(),
                message: format!("dimension {dim} of size {size} does not divide into {world} shards"),
            });
        }
        let chunk = size / world;
        self.get_range(name, full_shape, dim, rank as i64 * chunk, chunk, kind, device)
    }

    /// Entries `start..start + len` of `name` along `dim` (e.g. one rank's rows of
    /// the embedding). Only those bytes are read from the map.
    #[allow(clippy::too_many_arguments)]
    pub fn get_range(
        &self,
        name: &str,
        full_shape: &[i64],
        dim: usize,
        start: i64,
        len: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, ModelError> {
        let (file, info) = self.info(name)?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if shape != full_shape {
            return Err(ModelError::Shape { name: name.into(), expected: full_shape.to_vec(), got: shape });
        }
        let stored = stored_kind(info.dtype).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            message: format!("unsupported dtype {:?} in {}", info.dtype, file.name.display()),
        })?;
        let data = &file.bytes[file.data_start + info.data_offsets.0..file.data_start + info.data_offsets.1];
        let (bytes, slice_shape) = slice_bytes(data, &shape, dim, start, len, info.dtype.bitsize() / 8)
            .map_err(|message| ModelError::Tensor { name: name.into(), message })?;
        let tensor = Tensor::f_from_data_size(&bytes, &slice_shape, stored)?;
        Ok(tensor.f_to_kind(kind)?.f_to_device(device)?)
    }
}

impl File {
    fn parse(name: PathBuf, bytes: Bytes) -> Result<File, ModelError> {
        let (header, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::InFile {
            file: name.clone(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        Ok(File { name, data_start: 8 + header, tensors, bytes })
    }
}

fn stored_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// Copy entries `start..start + len` along `dim` of a row-major tensor.
fn slice_bytes<'a>(
    data: &'a [u8],
    shape: &[i64],
    dim: usize,
    start: i64,
    len: i64,
    elem: usize,
) -> Result<(Cow<'a, [u8]>, Vec<i64>), String> {
    let size = *shape.get(dim).ok_or_else(|| format!("has no dimension {dim} to slice"))?;
    if start < 0 || len < 0 || start + len > size {
        return Err(format!("entries {start}..{} are outside dimension {dim} of size {size}", start + len));
    }
    let mut slice_shape = shape.to_vec();
    slice_shape[dim] = len;
    let (size, start, len) = (size as usize, start as usize, len as usize);
    let inner: usize = shape[dim + 1..].iter().product::<i64>() as usize * elem;
    let outer: usize = shape[..dim].iter().product::<i64>() as usize;
    if outer == 1 {
        // One contiguous run: borrow it from the map, no intermediate copy.
        return Ok((Cow::Borrowed(&data[start * inner..(start + len) * inner]), slice_shape));
    }
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let from = (o * size + start) * inner;
        out.extend_from_slice(&data[from..from + len * inner]);
    }
    Ok((Cow::Owned(out), slice_shape))
}

fn shard_names(index_path: &Path) -> Result<Vec<String>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| ModelError::InFile {
        file: index_path.to_path_buf(),
        message: format!("not a valid safetensors index: {e}"),
    })?;
    let mut names: Vec<String> = index.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::slice_bytes;

    #[test]
    fn slices_rows_and_columns() {
        // 2 x 4 matrix of u8 values 0..8
        let data: Vec<u8> = (0..8).collect();
        let (rows, shape) = slice_bytes(&data, &[2, 4], 0, 1, 1, 1).unwrap();
        assert_eq!((rows.to_vec(), shape), (vec![4, 5, 6, 7], vec![1, 4]));
        let (cols, shape) = slice_bytes(&data, &[2, 4], 1, 2, 2, 1).unwrap();
        assert_eq!((cols.to_vec(), shape), (vec![2, 3, 6, 7], vec![2, 2]));
        let (cols, shape) = slice_bytes(&data, &[2, 4], 1, 1, 3, 1).unwrap();
        assert_eq!((cols.to_vec(), shape), (vec![1, 2, 3, 5, 6, 7], vec![2, 3]));
        assert!(slice_bytes(&data, &[2, 4], 1, 2, 3, 1).unwrap_err().contains("outside dimension 1 of size 4"));
    }
}
