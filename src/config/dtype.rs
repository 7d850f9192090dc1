//! The element type the decoder runs in, and `auto`: bf16 where it computes
//! natively (CUDA; CPUs with AVX512-BF16 or AMX), f32 elsewhere. On an
//! AVX2-only CPU libtorch's bf16 matmul runs at well under 1 GFLOP/s against
//! about 90 in f32.

use tch::Device;

/// Element type of the decoder. Norms, softmax and the reward head are fp32 regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else f32.
    Auto,
    F32,
    Bf16,
}

impl DType {
    /// The torch kind. `Auto` is taken as resolved for the CPU; resolve it for
    /// the real device first ([`DType::resolve`]).
    pub fn kind(self) -> tch::Kind {
        match self.resolve(Device::Cpu).0 {
            DType::Bf16 => tch::Kind::BFloat16,
            _ => tch::Kind::Float,
        }
    }

    /// The concrete dtype on `device`, and why, for the start-up log.
    pub fn resolve(self, device: Device) -> (DType, &'static str) {
        match (self, device) {
            (DType::F32, _) => (DType::F32, "asked for"),
            (DType::Bf16, _) => (DType::Bf16, "asked for"),
            (DType::Auto, Device::Cuda(_)) => (DType::Bf16, "auto: CUDA computes bf16 natively"),
            (DType::Auto, _) if cpu_has_native_bf16() => {
                (DType::Bf16, "auto: this CPU computes bf16 natively (AVX512-BF16 or AMX)")
            }
            (DType::Auto, _) => {
                (DType::F32, "auto: this CPU has no native bf16 (no AVX512-BF16 or AMX), f32 is faster")
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Auto => "auto",
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }
}

/// Whether this machine's CPU has AVX512-BF16 or AMX-BF16 (`/proc/cpuinfo`).
pub fn cpu_has_native_bf16() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE
        .get_or_init(|| std::fs::read_to_string("/proc/cpuinfo").map(|t| flags_have_native_bf16(&t)).unwrap_or(false))
}

/// Whether a `/proc/cpuinfo` text lists a native bf16 matmul instruction set.
pub fn flags_have_native_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .take(1)
        .any(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_native_bf16_from_cpu_flags() {
        let avx2 = "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma\n";
        let avx512 = "flags\t\t: fpu avx2 avx512f avx512_bf16\n";
        let amx = "flags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n";
        assert!(!flags_have_native_bf16(avx2));
        assert!(flags_have_native_bf16(avx512) && flags_have_native_bf16(amx));
        assert!(!flags_have_native_bf16("flags : avx512f avx512_bf16x\n"));
    }

    #[test]
    fn auto_is_bf16_on_cuda_and_explicit_choices_stand() {
        assert_eq!(DType::Auto.resolve(Device::Cuda(0)).0, DType::Bf16);
        assert_eq!(DType::F32.resolve(Device::Cuda(0)).0, DType::F32);
        assert_eq!(DType::Bf16.resolve(Device::Cpu).0, DType::Bf16);
        let cpu = DType::Auto.resolve(Device::Cpu).0;
        assert_eq!(cpu == DType::Bf16, cpu_has_native_bf16());
    }
}
