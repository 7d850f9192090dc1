//! KServe v2 tensors on the wire: the JSON form (`data` arrays) and Triton's
//! binary tensor extension, where the body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the raw tensors in input
//! order, each announced by `parameters.binary_data_size`. BYTES elements are a
//! little-endian u32 length then the bytes; numbers are little-endian.

use serde_json::Value;

use super::errors::ApiError;

/// The header that splits a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorIn {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bytes(Vec<Vec<u8>>),
    Int64(Vec<i64>),
}

/// The parsed request: its JSON header and its tensors.
#[derive(Debug)]
pub struct InferRequest {
    pub header: Value,
    pub inputs: Vec<TensorIn>,
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request("invalid_tensor", message)
}

/// Split and decode a request body. `header_length` is the value of
/// `Inference-Header-Content-Length`, if the client sent one.
pub fn parse_request(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, ApiError> {
    let (json_part, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(bad(format!("{HEADER_LENGTH} is {n} but the body has only {} bytes", body.len())))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let header = super::limits::json_body(json_part)?;
    // KServe v2: the request id is a string (it is echoed back as one).
    if let Some(id) = header.get("id").filter(|id| !id.is_string() && !id.is_null()) {
        return Err(bad(format!("`id` must be a string, got {id}")));
    }
    let Some(Value::Array(inputs)) = header.get("inputs") else {
        return Err(bad("the request needs `inputs` (an array of tensors)".into()));
    };
    let mut out = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("inputs[{i}] needs a `name` (a string)")))?
            .to_owned();
        let datatype = input
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("input `{name}` needs a `datatype` (a string)")))?;
        let shape: Vec<usize> = input
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("input `{name}` needs a `shape` (an array of non-negative integers)")))?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("input `{name}`: shape {shape:?} is too large")))?;
        let binary_size = input.get("parameters").and_then(|p| p.get("binary_data_size")).and_then(Value::as_u64);
        let data = match binary_size {
            Some(size) => {
                let size = size as usize;
                if size > binary.len() {
                    return Err(bad(format!(
                        "input `{name}` announces {size} binary bytes but only {} are left in the body",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                decode_binary(&name, datatype, mine)?
            }
            None => decode_json(&name, datatype, input.get("data"), &shape)?,
        };
        let len = match &data {
            TensorData::Bytes(v) => v.len(),
            TensorData::Int64(v) => v.len(),
        };
        if len != count {
            return Err(bad(format!("input `{name}`: shape {shape:?} has {count} elements but its data has {len}")));
        }
        out.push(TensorIn { name, shape, data });
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data follow the tensors the header announces", binary.len())));
    }
    Ok(InferRequest { header, inputs: out })
}

fn decode_binary(name: &str, datatype: &str, mut bytes: &[u8]) -> Result<TensorData, ApiError> {
    match datatype {
        "BYTES" => {
            let mut items = Vec::new();
            while !bytes.is_empty() {
                if bytes.len() < 4 {
                    return Err(bad(format!("input `{name}`: a BYTES element is cut off in its length prefix")));
                }
                let n = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
                if bytes.len() < 4 + n {
                    return Err(bad(format!("input `{name}`: a BYTES element of {n} bytes is cut off")));
                }
                items.push(bytes[4..4 + n].to_vec());
                bytes = &bytes[4 + n..];
            }
            Ok(TensorData::Bytes(items))
        }
        "INT64" => {
            if !bytes.len().is_multiple_of(8) {
                return Err(bad(format!(
                    "input `{name}`: {} binary bytes are not a whole number of INT64s",
                    bytes.len()
                )));
            }
            Ok(TensorData::Int64(
                bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            ))
        }
        other => Err(unsupported(name, other)),
    }
}

fn decode_json(name: &str, datatype: &str, data: Option<&Value>, shape: &[usize]) -> Result<TensorData, ApiError> {
    let data = data.ok_or_else(|| bad(format!("input `{name}` has neither `data` nor binary_data_size")))?;
    // Flat (row-major), or nested exactly as the shape: a nesting that disagrees
    // with the shape is refused rather than flattened into some other tensor.
    let nested = data.as_array().is_some_and(|items| items.iter().any(Value::is_array));
    if nested && !nesting_matches(data, shape) {
        return Err(bad(format!(
            "input `{name}`: `data` is nested but not as its shape {shape:?}; send it flat or nested as the shape"
        )));
    }
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    match datatype {
        "BYTES" => flat
            .into_iter()
            .map(|v| v.as_str().map(|s| s.as_bytes().to_vec()))
            .collect::<Option<_>>()
            .map(TensorData::Bytes)
            .ok_or_else(|| bad(format!("input `{name}` is BYTES: its data must be strings"))),
        "INT64" => flat
            .into_iter()
            .map(Value::as_i64)
            .collect::<Option<_>>()
            .map(TensorData::Int64)
            .ok_or_else(|| bad(format!("input `{name}` is INT64: its data must be integers"))),
        other => Err(unsupported(name, other)),
    }
}

fn nesting_matches(v: &Value, shape: &[usize]) -> bool {
    match (v, shape.split_first()) {
        (Value::Array(items), Some((&n, rest))) => items.len() == n && items.iter().all(|i| nesting_matches(i, rest)),
        (Value::Array(_), None) => false,
        (_, None) => true,
        (_, Some(_)) => false,
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn unsupported(name: &str, datatype: &str) -> ApiError {
    bad(format!("input `{name}` has datatype {datatype}; this model takes BYTES `sentences` or INT64 `tokens` and `sequence_lengths`"))
}

/// Little-endian FP32 bytes of `values`.
pub fn fp32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes_elements(items: &[&str]) -> Vec<u8> {
        items.iter().flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes())).collect()
    }

    #[test]
    fn json_tensors_decode_nested_or_flat() {
        let header = json!({"inputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            {"name": "sequence_lengths", "datatype": "INT64", "shape": [2, 1], "data": [2, 1]}]});
        let req = parse_request(header.to_string().as_bytes(), None).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Int64(vec![1, 2, 3, 4]));
        assert_eq!(req.inputs[1].shape, vec![2, 1]);
    }

    #[test]
    fn binary_tensors_follow_the_header_in_order() {
        let sentences = bytes_elements(&["ab", "héllo"]);
        let ints: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = json!({"inputs": [
            {"name": "sentences", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": sentences.len()}},
            {"name": "x", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}]})
        .to_string();
        let body: Vec<u8> = [header.as_bytes(), &sentences, &ints].concat();
        let req = parse_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Bytes(vec![b"ab".to_vec(), "héllo".as_bytes().to_vec()]));
        assert_eq!(req.inputs[1].data, TensorData::Int64(vec![7, -1]));
    }

    #[test]
    fn mismatches_are_named() {
        let err = |header: Value| parse_request(header.to_string().as_bytes(), None).unwrap_err().message;
        let m = err(json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [2, 3], "data": [1, 2]}]}));
        assert!(m.contains("shape [2, 3] has 6 elements but its data has 2"), "{m}");
        let m = err(json!({"inputs": [{"name": "tokens", "datatype": "FP32", "shape": [1], "data": [1.0]}]}));
        assert!(m.contains("datatype FP32"), "{m}");
        let m = err(json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1], "data": [3]}]}));
        assert!(m.contains("must be strings"), "{m}");
        let m = err(
            json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2, 3], [4]]}]}),
        );
        assert!(m.contains("nested but not as its shape [2, 2]"), "{m}");
        let m = err(json!({"id": 7, "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1], "data": [1]}]}));
        assert!(m.contains("`id` must be a string"), "{m}");
        let m = err(json!({"outputs": []}));
        assert!(m.contains("needs `inputs`"), "{m}");
        let header = json!({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}]}).to_string();
        let body = [header.as_bytes(), &[0u8; 8]].concat();
        let m = parse_request(&body, Some(header.len())).unwrap_err().message;
        assert!(m.contains("announces 16 binary bytes but only 8"), "{m}");
        let m = parse_request(header.as_bytes(), Some(header.len() + 1)).unwrap_err().message;
        assert!(m.contains("inference-header-content-length"), "{m}");
    }
}
