//! Reading and writing safetensors files.
//!
//! [`TensorFiles`] memory-maps a checkpoint (one `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`) and converts one tensor at a time to f32, so loading never
//! holds a second copy of the weights. [`save_tensors`] writes f32 tensors atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::error::{Error, Result};
use crate::llama::WeightDtype;

struct MappedFile {
    path: PathBuf,
    map: Mmap,
    /// Byte offset of the data section (8-byte length prefix plus header).
    data_start: usize,
    metadata: Metadata,
}

/// A set of memory-mapped safetensors files that together hold one checkpoint.
pub struct TensorFiles {
    /// What error messages call the checkpoint (a file or a directory).
    origin: PathBuf,
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    location: HashMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl TensorFiles {
    /// Opens the checkpoint in a model directory: `model.safetensors.index.json` with its shards
    /// if present, else `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let index: ShardIndex = crate::io::read_json(&index_path)?;
            let mut shard_names: Vec<&String> = index.weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            if shard_names.is_empty() {
                return Err(Error::config(&index_path, "weight_map", "lists no tensors"));
            }
            let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
            return Self::open_files(dir, &paths);
        }
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::open_files(&single, std::slice::from_ref(&single));
        }
        Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no model.safetensors or model.safetensors.index.json in this directory"),
        ))
    }

    /// Opens a single safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open_files(path, &[path.to_path_buf()])
    }

    fn open_files(origin: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only; lalora never writes to a file it has mapped (all
            // writes go to a temporary file that is renamed over the old name).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| Error::Safetensors { path: path.clone(), reason: e.to_string() })?;
            for name in metadata.tensors().keys() {
                location.insert(name.clone(), i);
            }
            files.push(MappedFile { path: path.clone(), map, data_start: 8 + header_len, metadata });
        }
        Ok(TensorFiles { origin: origin.to_path_buf(), files, location })
    }

    /// The checkpoint's path, as used in error messages.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.location.keys().cloned().collect();
        names.sort();
        names
    }

    fn info(&self, name: &str) -> Result<(&MappedFile, &TensorInfo)> {
        let index = *self.location.get(name).ok_or_else(|| Error::MissingTensor { path: self.origin.clone(), name: name.to_string() })?;
        let file = &self.files[index];
        let info = file.metadata.info(name).expect("name was indexed from this file's metadata");
        Ok((file, info))
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.1.shape.clone())
    }

    /// A tensor's file and metadata, its stored shape checked against `expected`.
    fn info_with_shape(&self, name: &str, expected: &[usize]) -> Result<(&MappedFile, &TensorInfo)> {
        let (file, info) = self.info(name)?;
        if info.shape != expected {
            return Err(Error::TensorShape {
                path: file.path.clone(),
                name: name.to_string(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok((file, info))
    }

    /// Reads a floating-point tensor as f32, checking its shape against `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<TensorData> {
        let (_, info) = self.info_with_shape(name, expected)?;
        let values = self.read_f32_values(name)?;
        Ok(TensorData::new(values, info.shape.clone()))
    }

    /// Reads a floating-point tensor in `dtype`, checking its shape against `expected`: a
    /// tensor stored in that type is copied as it is, any other is rounded to nearest even
    /// (as `tensor.to(dtype)` in torch).
    pub fn read_as(&self, name: &str, expected: &[usize], dtype: WeightDtype) -> Result<TensorData> {
        let stored = match self.info(name)?.1.dtype {
            Dtype::BF16 => Some(WeightDtype::Bf16),
            Dtype::F16 => Some(WeightDtype::F16),
            _ => None,
        };
        if dtype == WeightDtype::F32 || stored != Some(dtype) {
            return Ok(dtype.convert(self.read_f32(name, expected)?));
        }
        let (file, info) = self.info_with_shape(name, expected)?;
        let (start, end) = info.data_offsets;
        let bytes = file.map[file.data_start + start..file.data_start + end].to_vec();
        Ok(TensorData::from_bytes_vec(bytes, info.shape.clone(), dtype.dtype()))
    }

    /// Reads a floating-point tensor as f32 with whatever shape it has on disk.
    pub fn read_f32_any(&self, name: &str) -> Result<TensorData> {
        let shape = self.shape(name)?;
        self.read_f32(name, &shape)
    }

    fn read_f32_values(&self, name: &str) -> Result<Vec<f32>> {
        let (file, info) = self.info(name)?;
        let (start, end) = info.data_offsets;
        let bytes = &file.map[file.data_start + start..file.data_start + end];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect(),
            Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("chunk of 8")) as f32).collect(),
            other => return Err(Error::TensorDtype { path: file.path.clone(), name: name.to_string(), dtype: format!("{other:?}") }),
        };
        Ok(values)
    }

    /// Reads an f64 tensor exactly (for float64 reference fixtures); f32/f16/bf16 are widened.
    pub fn read_f64_any(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let (file, info) = self.info(name)?;
        let (start, end) = info.data_offsets;
        let bytes = &file.map[file.data_start + start..file.data_start + end];
        let values = if info.dtype == Dtype::F64 {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("chunk of 8"))).collect()
        } else {
            self.read_f32_values(name)?.into_iter().map(f64::from).collect()
        };
        Ok((info.shape.clone(), values))
    }

    /// Reads an integer tensor (I64, I32, U32) as i64.
    pub fn read_i64_any(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (file, info) = self.info(name)?;
        let (start, end) = info.data_offsets;
        let bytes = &file.map[file.data_start + start..file.data_start + end];
        let values = match info.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8"))).collect(),
            Dtype::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4")) as i64).collect(),
            Dtype::U32 => bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4")) as i64).collect(),
            other => return Err(Error::TensorDtype { path: file.path.clone(), name: name.to_string(), dtype: format!("{other:?}") }),
        };
        Ok((info.shape.clone(), values))
    }

    /// The `__metadata__` string map of the first file, if any.
    pub fn metadata(&self) -> HashMap<String, String> {
        self.files.first().and_then(|f| f.metadata.metadata().clone()).unwrap_or_default()
    }
}

/// A tensor ready to be written: its dtype, shape and little-endian bytes.
pub(crate) struct EncodedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl safetensors::View for &EncodedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes encoded tensors to `path` as one safetensors file, atomically
/// ([`crate::io::write_atomic`]: temporary file, fsync, rename).
pub(crate) fn write_encoded(path: &Path, tensors: &[(String, EncodedTensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    crate::io::write_atomic(path, &bytes)
}

/// Writes named tensors to `path` as f32 safetensors, atomically. Tensors in any float dtype are
/// converted to f32.
pub fn save_tensors(path: &Path, tensors: Vec<(String, TensorData)>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let encoded: Vec<(String, EncodedTensor)> = tensors
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape.to_vec();
            let values: Vec<f32> = data.convert::<f32>().to_vec().expect("converted to f32");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, EncodedTensor { dtype: Dtype::F32, shape, bytes })
        })
        .collect();
    write_encoded(path, &encoded, metadata)
}
