//! safetensors files ↔ tch tensors: memory-mapped reads, atomic writes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, View};
use safetensors::SafeTensorError;
use tch::{Device, Kind, Tensor};

fn to_dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        other => bail!("cannot store tensors of kind {other:?} in safetensors"),
    })
}

fn to_kind(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        other => bail!("unsupported safetensors dtype {other:?}"),
    })
}

/// A CPU, contiguous tensor lent to the safetensors serialiser without copying.
struct CpuTensor {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    nbytes: usize,
}

impl CpuTensor {
    fn new(t: &Tensor) -> Result<Self> {
        let tensor = t.detach().to_device(Device::Cpu).contiguous();
        let dtype = to_dtype(tensor.kind())?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let nbytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
        Ok(CpuTensor {
            tensor,
            dtype,
            shape,
            nbytes,
        })
    }
}

impl View for &CpuTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.nbytes == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: the tensor is a live, contiguous CPU tensor of exactly `nbytes` bytes, and `self`
        // keeps it alive (and unmodified) for the lifetime of the returned slice.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.nbytes)
        })
    }
    fn data_len(&self) -> usize {
        self.nbytes
    }
}

/// Writes `tensors` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file and an existing good file survives a failed write.
pub fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let cpu: Vec<(String, CpuTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                CpuTensor::new(t).with_context(|| format!("tensor `{n}`"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let tmp = tmp_sibling(path);
    safetensors::tensor::serialize_to_file(
        cpu.iter().map(|(n, t)| (n.as_str(), t)),
        metadata,
        &tmp,
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A memory-mapped safetensors file.
pub struct StFile {
    path: PathBuf,
    mmap: Mmap,
}

impl StFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the file is opened read-only; Muninn never modifies a safetensors file in place
        // (writes go through a temporary file and a rename).
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        SafeTensors::deserialize(&mmap)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(StFile {
            path: path.to_path_buf(),
            mmap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated in open")
    }

    /// Names and shapes of every tensor, sorted by name.
    pub fn shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut v: Vec<_> = self
            .st()
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().iter().map(|&d| d as i64).collect()))
            .collect();
        v.sort();
        v
    }

    /// The tensor `name` as stored (dtype kept), on the CPU.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let view = match self.st().tensor(name) {
            Ok(v) => v,
            Err(SafeTensorError::TensorNotFound(_)) => {
                bail!("{} has no tensor named `{name}`", self.path.display())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading `{name}` from {}", self.path.display()))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let kind = to_kind(view.dtype())
            .with_context(|| format!("tensor `{name}` in {}", self.path.display()))?;
        Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("decoding `{name}` from {}", self.path.display()))
    }

    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.mmap)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
    }
}
