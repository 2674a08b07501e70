//! Safetensors interchange (DESIGN.md §5): a small typed layer over the
//! `safetensors` crate ([`TensorFile`]) and atomic writes ([`write_atomic`]).
//! Model, episode and gradient files are built on it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result, Shape};

/// The element data of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// `F32`.
    F32(Vec<f32>),
    /// `F64`.
    F64(Vec<f64>),
    /// `I64`.
    I64(Vec<i64>),
    /// `U8`.
    U8(Vec<u8>),
}

impl Data {
    fn dtype(&self) -> Dtype {
        match self {
            Data::F32(_) => Dtype::F32,
            Data::F64(_) => Dtype::F64,
            Data::I64(_) => Dtype::I64,
            Data::U8(_) => Dtype::U8,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::U8(v) => v.len(),
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U8(v) => v.clone(),
        }
    }
    fn dtype_name(&self) -> &'static str {
        match self {
            Data::F32(_) => "F32",
            Data::F64(_) => "F64",
            Data::I64(_) => "I64",
            Data::U8(_) => "U8",
        }
    }
}

/// A named tensor: shape and data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Data,
}

impl Tensor {
    /// An `F32` tensor.
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        Tensor { shape: shape.to_vec(), data: Data::F32(data) }
    }
}

/// The contents of one safetensors file: tensors and string metadata.
/// Reading it back names the file and the tensor in every error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    /// The file it was read from (for messages); empty for a new one.
    pub path: String,
}

fn le_chunks<const K: usize, T>(b: &[u8], f: impl Fn([u8; K]) -> T) -> Vec<T> {
    b.chunks_exact(K).map(|c| f(c.try_into().expect("chunks_exact yields K bytes"))).collect()
}

impl TensorFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an `F32` tensor.
    pub fn put_f32(&mut self, name: &str, shape: &[usize], data: Vec<f32>) {
        self.tensors.insert(name.to_string(), Tensor::f32(shape, data));
    }

    /// Adds a tensor of any dtype.
    pub fn put(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// Reads and parses a safetensors file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: p.clone(), source })?;
        Self::parse(&bytes, &p)
    }

    /// Parses the bytes of a safetensors file; `path` is used in messages.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Self> {
        let fmt = |message: String| Error::Format { path: path.to_string(), message };
        let st = SafeTensors::deserialize(bytes).map_err(|e| fmt(format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| fmt(format!("bad header: {e}")))?;
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        let mut tensors = BTreeMap::new();
        for (name, v) in st.iter() {
            let b = v.data();
            let data = match v.dtype() {
                Dtype::F32 => Data::F32(le_chunks(b, f32::from_le_bytes)),
                Dtype::F64 => Data::F64(le_chunks(b, f64::from_le_bytes)),
                Dtype::I64 => Data::I64(le_chunks(b, i64::from_le_bytes)),
                Dtype::U8 => Data::U8(b.to_vec()),
                d => {
                    return Err(fmt(format!(
                        "tensor `{name}` has dtype {d:?}; expected F32 (or F64/I64/U8 in checkpoints)"
                    )));
                }
            };
            tensors.insert(name.to_string(), Tensor { shape: v.shape().to_vec(), data });
        }
        Ok(TensorFile { tensors, metadata, path: path.to_string() })
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
            self.tensors.iter().map(|(n, t)| (n.clone(), t.data.dtype(), t.shape.clone(), t.data.bytes())).collect();
        let mut views = Vec::with_capacity(bufs.len());
        for (n, d, s, b) in &bufs {
            let v = TensorView::new(*d, s.clone(), b).map_err(|e| Error::Format {
                path: self.path.clone(),
                message: format!("tensor `{n}`: shape {} does not match its data: {e}", Shape(s.clone())),
            })?;
            views.push((n.clone(), v));
        }
        let meta = if self.metadata.is_empty() { None } else { Some(self.metadata.clone().into_iter().collect()) };
        safetensors::serialize(views, meta)
            .map_err(|e| Error::Format { path: self.path.clone(), message: format!("cannot serialize: {e}") })
    }

    /// Writes the file atomically (see [`write_atomic`]).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    fn err(&self, message: String) -> Error {
        Error::Format { path: self.path.clone(), message }
    }

    /// Whether tensor `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns the `F32` tensor `name`; errors when it is missing,
    /// has another dtype, or (when `shape` is given) another shape.
    pub fn take_f32(&mut self, name: &str, shape: Option<&[usize]>) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensors.remove(name).ok_or_else(|| self.err(format!("missing required tensor `{name}`")))?;
        let Data::F32(v) = t.data else {
            return Err(self.err(format!("tensor `{name}` has dtype {}, expected F32", t.data.dtype_name())));
        };
        if let Some(s) = shape {
            if t.shape != s {
                return Err(self.err(format!(
                    "tensor `{name}`: expected shape {}, got {}",
                    Shape(s.to_vec()),
                    Shape(t.shape)
                )));
            }
        }
        Ok((t.shape, v))
    }

    /// Like [`TensorFile::take_f32`] for an optional tensor.
    pub fn take_f32_opt(&mut self, name: &str, shape: Option<&[usize]>) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        if self.has(name) { self.take_f32(name, shape).map(Some) } else { Ok(None) }
    }

    /// Removes and returns tensor `name` of any dtype.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| self.err(format!("missing required tensor `{name}`")))
    }

    /// A metadata string, or an error naming the key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(|s| s.as_str()).ok_or_else(|| self.err(format!("missing metadata key `{key}`")))
    }

    /// Errors when tensors remain that nobody took (unknown names).
    pub fn finish(&self, what: &str) -> Result<()> {
        if let Some(name) = self.tensors.keys().next() {
            let all: Vec<&str> = self.tensors.keys().map(|s| s.as_str()).collect();
            return Err(self.err(format!("unknown tensor `{name}` in {what} file (unexpected: {})", all.join(", "))));
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over `path`. A crash leaves either the old
/// file or the new one, never a torn one.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let p = path.display().to_string();
    let io = |source| Error::Io { path: p.clone(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config { arg: "path".into(), message: format!("`{p}` names no file") })?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}
