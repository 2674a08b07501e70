//! Safetensors interchange (`docs/design.md` §5): a small typed layer over the
//! `safetensors` crate ([`TensorFile`]) and atomic writes ([`write_atomic`]),
//! and on top of it the model, episode and gradient files ([`load_model`],
//! [`save_model`], [`load_episode`], [`save_episode`], [`save_gradients`],
//! [`load_gradients`]). The formats, their metadata keys and defaults are
//! documented for users in `docs/formats.md`.
//!
//! Files that hold a model among other things (training checkpoints) use the
//! building blocks [`put_model`] / [`take_model`] and [`put_episode`] /
//! [`take_episode`], then [`TensorFile::finish`] to reject leftovers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::config::{
    Activation, AlphaShape, EtaMode, InputMap, LayerConfig, ModActivation, ModulatorConfig, Rule, Topology,
};
use crate::error::{Error, Result, Shape, check_len};
use crate::model::{Episode, Head, Model, ModelGrads};
use crate::params::{Gradients, Params, State, param_shapes, state_shapes};

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
    /// Bytes per element.
    fn elem_size(&self) -> usize {
        match self {
            Data::F32(_) => 4,
            Data::F64(_) | Data::I64(_) => 8,
            Data::U8(_) => 1,
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
        let len = std::fs::metadata(path).map_err(|source| Error::Io { path: p.clone(), source })?.len();
        // Reading holds the file's bytes and the decoded tensors at once.
        let mut need = crate::limits::Estimate::new();
        need.add("the file's bytes", len as u128).add("its decoded tensors", len as u128);
        need.check(
            &p,
            "reading this file",
            "is it the file you meant? (a model or episode this large cannot be loaded here)",
        )?;
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: p.clone(), source })?;
        Self::parse(&bytes, &p)
    }

    /// Parses the bytes of a safetensors file; `path` is used in messages.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Self> {
        let fmt = |message: String| Error::Format { path: path.to_string(), message };
        let st = SafeTensors::deserialize(bytes).map_err(|e| match e {
            safetensors::SafeTensorError::ValidationOverflow => fmt(overflowing_shape(bytes)),
            e => fmt(format!("not a valid safetensors file: {e}")),
        })?;
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
                        "tensor `{name}` has dtype {d:?}, which neuroplastic does not read: store it as F32"
                    )));
                }
            };
            tensors.insert(name.to_string(), Tensor { shape: v.shape().to_vec(), data });
        }
        Ok(TensorFile { tensors, metadata, path: path.to_string() })
    }

    /// Serializes to safetensors bytes. The same contents always give the
    /// same bytes (users hash and cache these files): metadata keys in
    /// sorted order, tensors by element size (8-byte types first, so every
    /// tensor is aligned to its element size) then by name. The `safetensors`
    /// crate's own writer takes the metadata as a `HashMap`, whose order
    /// changes from run to run, hence this writer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let fmt = |message: String| Error::Format { path: self.path.clone(), message };
        let mut order: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        order.sort_by(|a, b| b.1.data.elem_size().cmp(&a.1.data.elem_size()).then(a.0.cmp(b.0)));
        let js = |v: &str| serde_json::to_string(v).expect("a string serializes");
        let mut header = String::from("{");
        let mut first = true;
        if !self.metadata.is_empty() {
            header.push_str("\"__metadata__\":{");
            let kv: Vec<String> = self.metadata.iter().map(|(k, v)| format!("{}:{}", js(k), js(v))).collect();
            header.push_str(&kv.join(","));
            header.push('}');
            first = false;
        }
        let mut offset = 0usize;
        let mut data = Vec::with_capacity(order.len());
        for (name, t) in order {
            if name == "__metadata__" {
                return Err(fmt("a tensor cannot be named `__metadata__` (the header's metadata key)".into()));
            }
            let want = crate::error::element_count(&t.shape);
            if want != Some(t.data.len()) {
                return Err(fmt(format!(
                    "tensor `{name}`: shape {} does not match its {} elements",
                    Shape(t.shape.clone()),
                    t.data.len()
                )));
            }
            let bytes = t.data.bytes();
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            if !first {
                header.push(',');
            }
            first = false;
            header.push_str(&format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                js(name),
                t.data.dtype_name(),
                shape.join(","),
                offset,
                offset + bytes.len()
            ));
            offset += bytes.len();
            data.push(bytes);
        }
        header.push('}');
        // The data starts 8-byte aligned: pad the header with spaces, as the format allows.
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for b in data {
            out.extend_from_slice(&b);
        }
        Ok(out)
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
        if let Some(s) = shape
            && t.shape != s
        {
            return Err(self.err(format!(
                "tensor `{name}`: expected shape {}, got {}",
                Shape(s.to_vec()),
                Shape(t.shape)
            )));
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

/// The message for a header whose declared shape has more elements than
/// any buffer can hold, naming the tensor (read from the header JSON).
fn overflowing_shape(bytes: &[u8]) -> String {
    let generic = "a tensor's declared shape has more elements than any file can hold".to_string();
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else {
        return generic;
    };
    let Some(Ok(serde_json::Value::Object(header))) =
        bytes.get(8..8usize.saturating_add(len)).map(serde_json::from_slice::<serde_json::Value>)
    else {
        return generic;
    };
    for (name, t) in &header {
        let Some(shape) = t.get("shape").and_then(|s| s.as_array()) else { continue };
        let dims: Vec<u64> = shape.iter().filter_map(|d| d.as_u64()).collect();
        if dims.iter().try_fold(8u64, |a, &d| a.checked_mul(d)).is_none() {
            let dims: Vec<String> = dims.iter().map(u64::to_string).collect();
            return format!(
                "tensor `{name}` declares shape ({}), more elements than any file can hold",
                dims.join(", ")
            );
        }
    }
    generic
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over `path`. A crash leaves either the old
/// file or the new one, never a torn one.
///
/// What `path` already is, is kept: through a symbolic link the file it
/// points to is replaced (the link stays a link); an existing file's
/// permissions carry over to the new one, and a read-only file is refused
/// rather than replaced; a device or pipe (`/dev/null`, `/dev/stdout`) is
/// written to in place, never replaced by a regular file; a folder is an error.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let given = path.as_ref();
    let p = given.display().to_string();
    let io = |source| Error::Io { path: p.clone(), source };
    let refuse = |message: String| Error::Config { arg: p.clone(), message };
    let path = resolve_links(given).map_err(io)?;
    let existing = std::fs::metadata(&path).ok();
    if let Some(m) = &existing {
        if m.is_dir() {
            return Err(refuse("is a folder, expected a file name".into()));
        }
        if !m.is_file() {
            // A device or pipe: written in place (a rename would replace it).
            return std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(bytes))
                .map_err(io);
        }
        if m.permissions().readonly() {
            return Err(refuse("is read-only: make it writable or choose another name".into()));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| refuse("names no file".into()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = &existing {
            f.set_permissions(m.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}

/// `path` with symbolic links followed to the file they name (which may not
/// exist yet), so that replacing it keeps the link.
fn resolve_links(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(d) if target.is_relative() => d.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

// ---------------------------------------------------------------------------
// Model, episode and gradient files (`docs/design.md` §5; the format is documented
// for users in docs/formats.md, which must change with this code).
// ---------------------------------------------------------------------------

/// Metadata key: the trace rule (`hebb`, `oja`, `modulated`, `retroactive`). Required.
pub const KEY_RULE: &str = "neuroplastic.rule";
/// Metadata key: the granularity of `alpha` (`connection`, `neuron`, `scalar`).
/// Optional: inferred from the shape of `alpha`; must agree with it when present.
pub const KEY_ALPHA: &str = "neuroplastic.alpha";
/// Metadata key: the layer's non-linearity (`tanh`, `identity`). Default `tanh`.
pub const KEY_ACTIVATION: &str = "neuroplastic.activation";
/// Metadata key: the modulator's non-linearity (`tanh`, `sigmoid`, `identity`). Default `tanh`.
pub const KEY_MODULATOR: &str = "neuroplastic.modulator";
/// Metadata key: `c_max`, a decimal number > 0. Required by `modulated` and `retroactive`.
pub const KEY_CLIP: &str = "neuroplastic.clip";
/// Metadata key: whether η / η_e is learned (`learned`, `fixed`). Default `learned`.
pub const KEY_ETA: &str = "neuroplastic.eta";
/// Metadata key: `recurrent` (default) or `feedforward`.
pub const KEY_TOPOLOGY: &str = "neuroplastic.topology";
/// Every metadata key a model file may hold; any other `neuroplastic.*` key
/// is an error (a misspelt key would otherwise be silently ignored). Keys
/// outside the `neuroplastic.` prefix (e.g. `format` written by other tools)
/// are ignored.
pub const MODEL_KEYS: [&str; 7] = [KEY_RULE, KEY_ALPHA, KEY_ACTIVATION, KEY_MODULATOR, KEY_CLIP, KEY_ETA, KEY_TOPOLOGY];

/// File names of the head's tensors.
pub const HEAD_WEIGHT: &str = "head.out.weight";
/// File name of the head's bias.
pub const HEAD_BIAS: &str = "head.out.bias";

fn topology_name(t: Topology) -> &'static str {
    match t {
        Topology::Recurrent => "recurrent",
        Topology::FeedForward => "feedforward",
    }
}

fn topology_parse(s: &str) -> Option<Topology> {
    match s {
        "recurrent" => Some(Topology::Recurrent),
        "feedforward" => Some(Topology::FeedForward),
        _ => None,
    }
}

fn eta_name(e: EtaMode) -> &'static str {
    match e {
        EtaMode::Learned => "learned",
        EtaMode::Fixed => "fixed",
    }
}

fn eta_parse(s: &str) -> Option<EtaMode> {
    match s {
        "learned" => Some(EtaMode::Learned),
        "fixed" => Some(EtaMode::Fixed),
        _ => None,
    }
}

/// A shape `[]` stands for a scalar in PyTorch/numpy; wherever the format
/// asks for `(1,)` both are accepted.
fn is_one(shape: &[usize]) -> bool {
    shape.is_empty() || shape == [1]
}

impl TensorFile {
    /// An `F32` tensor that must be present, finite, with any shape.
    fn take_finite(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, v) = self.take_f32(name, None)?;
        self.check_finite(name, &v)?;
        Ok((shape, v))
    }

    fn take_finite_opt(&mut self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        if self.has(name) { self.take_finite(name).map(Some) } else { Ok(None) }
    }

    fn check_finite(&self, name: &str, v: &[f32]) -> Result<()> {
        match v.iter().position(|x| !x.is_finite()) {
            Some(k) => Err(self.err(format!("tensor `{name}`: element {k} is not finite ({})", v[k]))),
            None => Ok(()),
        }
    }

    /// Errors unless `got == want`; `why` says where `want` comes from.
    fn expect_shape(&self, name: &str, got: &[usize], want: &[usize], why: &str) -> Result<()> {
        if got != want {
            return Err(self.err(format!(
                "tensor `{name}` has shape {}; expected {} ({why})",
                Shape(got.to_vec()),
                Shape(want.to_vec())
            )));
        }
        Ok(())
    }

    fn expect_one(&self, name: &str, got: &[usize], why: &str) -> Result<()> {
        if !is_one(got) {
            return Err(self.err(format!("tensor `{name}` has shape {}; expected (1,) ({why})", Shape(got.to_vec()))));
        }
        Ok(())
    }

    /// Errors when tensor `name` is present although `why` says it cannot be.
    fn forbid(&self, name: &str, why: &str) -> Result<()> {
        if self.has(name) {
            return Err(self.err(format!("tensor `{name}` is present, but {why}")));
        }
        Ok(())
    }

    /// Parses an optional metadata key with `parse`, naming the accepted values on failure.
    fn meta_enum<T>(&self, key: &str, accepted: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => parse(v)
                .map(Some)
                .ok_or_else(|| self.err(format!("metadata `{key}` = \"{v}\" is not one of {accepted}"))),
        }
    }
}

/// The metadata that describes `cfg` (what [`save_model`] writes).
pub fn model_metadata(cfg: &LayerConfig) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put(KEY_TOPOLOGY, topology_name(cfg.topology).into());
    put(KEY_RULE, cfg.rule.name().into());
    put(KEY_ALPHA, cfg.alpha.name().into());
    put(KEY_ACTIVATION, cfg.activation.name().into());
    if matches!(cfg.rule, Rule::Hebb | Rule::Oja | Rule::Retroactive) {
        put(KEY_ETA, eta_name(cfg.eta).into());
    }
    if cfg.rule.is_modulated() {
        put(KEY_MODULATOR, cfg.modulator.activation.name().into());
        // `{}` of an f64 prints the shortest decimal that reads back to the same number.
        put(KEY_CLIP, format!("{}", cfg.clip));
    }
    m
}

/// Adds `model`'s tensors and metadata to `file` (for files that hold more,
/// e.g. training checkpoints). Checks the model first.
pub fn put_model(file: &mut TensorFile, model: &Model) -> Result<()> {
    // w: (N, I)  alpha: (N, I) | (N,) | (1,)  u: (N, X)  mod.v, mod.fanout: (K, N)  head.out.weight: (O, N)
    model.validate(false)?;
    for ((name, v), (_, shape)) in model.params.named().into_iter().zip(param_shapes(&model.cfg)) {
        if !v.is_empty() {
            file.put_f32(name, &shape, v.clone());
        }
    }
    if let Some(h) = &model.head {
        let o = h.bias.len();
        file.put_f32(HEAD_WEIGHT, &[o, model.cfg.n], h.weight.clone());
        file.put_f32(HEAD_BIAS, &[o], h.bias.clone());
    }
    file.metadata.extend(model_metadata(&model.cfg));
    Ok(())
}

/// Removes a model's tensors from `file` and builds the [`Model`] they and
/// the `neuroplastic.*` metadata describe. Other tensors stay in `file`
/// (call [`TensorFile::finish`] to reject them); metadata is not checked for
/// unknown keys (see [`load_model`]).
///
/// The configuration comes from the metadata keys ([`MODEL_KEYS`]) and the
/// tensors' shapes: N from `w`, X from `u` (or X = N when `u` is absent,
/// [`InputMap::Direct`]), K from `mod.v`, and the presence of `b`, `mod.c`,
/// `mod.fanout`, `mod.fanout_bias`, `head.out.*`. Fields the rule does not
/// use (the modulator and `clip` of Hebb and Oja, the rate mode of
/// Modulated) come back with the defaults of [`LayerConfig::recurrent`].
pub fn take_model(file: &mut TensorFile) -> Result<Model> {
    // w: (N, I)  alpha: (N, I) | (N,) | (1,)  u: (N, X)  mod.v, mod.fanout: (K, N)  head.out.weight: (O, N)
    let f = file;
    let topology = f.meta_enum(KEY_TOPOLOGY, "recurrent, feedforward", topology_parse)?.unwrap_or(Topology::Recurrent);
    let rule = match f.metadata.get(KEY_RULE) {
        None => {
            return Err(f.err(format!(
                "missing metadata key `{KEY_RULE}` (one of hebb, oja, modulated, retroactive): it cannot be inferred from the tensors"
            )));
        }
        Some(_) => f.meta_enum(KEY_RULE, "hebb, oja, modulated, retroactive", Rule::parse)?.expect("key is present"),
    };
    let activation = f.meta_enum(KEY_ACTIVATION, "tanh, identity", Activation::parse)?.unwrap_or(Activation::Tanh);
    let mod_act =
        f.meta_enum(KEY_MODULATOR, "tanh, sigmoid, identity", ModActivation::parse)?.unwrap_or(ModActivation::Tanh);
    let eta_mode = f.meta_enum(KEY_ETA, "learned, fixed", eta_parse)?.unwrap_or(EtaMode::Learned);
    let alpha_key = f.meta_enum(KEY_ALPHA, "connection, neuron, scalar", AlphaShape::parse)?;
    let clip = match f.metadata.get(KEY_CLIP) {
        None if rule.is_modulated() => {
            return Err(f.err(format!(
                "missing metadata key `{KEY_CLIP}`: rule {} clips the trace to ±c_max and needs its value (e.g. \"2.0\")",
                rule.name()
            )));
        }
        None => 1.0,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(c) if c.is_finite() && c > 0.0 => c,
            _ => return Err(f.err(format!("metadata `{KEY_CLIP}` = \"{s}\" is not a finite decimal number > 0"))),
        },
    };

    // w: (N, I); a recurrent layer's pre-synaptic vector is its own state, so I = N.
    let (ws, w) = f.take_finite("w")?;
    let (n, pre) = match ws[..] {
        [n, i] if n > 0 && i > 0 => (n, i),
        _ => {
            return Err(f.err(format!(
                "tensor `w` has shape {}; expected a 2-D (N, I) matrix with N, I ≥ 1",
                Shape(ws.clone())
            )));
        }
    };
    if topology == Topology::Recurrent && n != pre {
        return Err(f.err(format!(
            "tensor `w` has shape {}; a recurrent layer's `w` maps h_(t-1) to h_t and must be square (N, N) (set `{KEY_TOPOLOGY}` = \"feedforward\" for a feed-forward layer)",
            Shape(ws)
        )));
    }

    // u: (N, X) or absent (the input is added directly, X = N).
    let (input_map, inputs, u) = match topology {
        Topology::FeedForward => {
            f.forbid("u", "a feed-forward layer's input is its pre-synaptic vector (`w` is (N, X)); it has no `u`")?;
            // The input map means nothing here; Linear is what LayerConfig::feed_forward sets.
            (InputMap::Linear, pre, Vec::new())
        }
        Topology::Recurrent => match f.take_finite_opt("u")? {
            None => (InputMap::Direct, n, Vec::new()),
            Some((us, u)) => match us[..] {
                [rows, x] if rows == n => (InputMap::Linear, x, u),
                _ => {
                    return Err(f.err(format!(
                        "tensor `u` has shape {}; expected (N, X) = ({n}, X) (N = {n} from `w`)",
                        Shape(us)
                    )));
                }
            },
        },
    };

    // alpha: the shape says the granularity; the key, when present, must agree.
    let (als, alpha) = f.take_finite("alpha")?;
    let inferred = if als == [n, pre] {
        Some(AlphaShape::Connection)
    } else if is_one(&als) {
        Some(AlphaShape::Scalar)
    } else if als == [n] {
        Some(AlphaShape::Neuron)
    } else {
        None
    };
    let alpha_shape = match (alpha_key, inferred) {
        (None, Some(a)) => a,
        (None, None) => {
            return Err(f.err(format!(
                "tensor `alpha` has shape {}; expected ({n}, {pre}) (per connection), ({n},) (per neuron) or (1,) (scalar), with N = {n}, I = {pre} from `w`",
                Shape(als)
            )));
        }
        (Some(a), _) => {
            let want = match a {
                AlphaShape::Connection => vec![n, pre],
                AlphaShape::Neuron => vec![n],
                AlphaShape::Scalar => vec![1],
            };
            let ok = als == want || (a == AlphaShape::Scalar && als.is_empty());
            if !ok {
                return Err(f.err(format!(
                    "tensor `alpha` has shape {}, but metadata `{KEY_ALPHA}` = \"{}\" requires {} (N = {n}, I = {pre} from `w`)",
                    Shape(als),
                    a.name(),
                    Shape(want)
                )));
            }
            a
        }
    };

    // Each rule has exactly the rates it uses.
    let has_eta = matches!(rule, Rule::Hebb | Rule::Oja);
    let rname = rule.name();
    let mut eta = Vec::new();
    let mut eta_e = Vec::new();
    if has_eta {
        if !f.has("eta") {
            return Err(f.err(format!("missing required tensor `eta` (rule {rname} has a trace rate η, shape (1,))")));
        }
        let (s, v) = f.take_finite("eta")?;
        f.expect_one("eta", &s, "the trace rate η is a scalar")?;
        eta = v;
    } else {
        f.forbid("eta", &format!("rule {rname} has no trace rate η (metadata `{KEY_RULE}` = \"{rname}\")"))?;
    }
    if rule.has_eligibility() {
        if !f.has("eta_e") {
            return Err(f.err(format!(
                "missing required tensor `eta_e` (rule {rname} has an eligibility-trace rate η_e, shape (1,))"
            )));
        }
        let (s, v) = f.take_finite("eta_e")?;
        f.expect_one("eta_e", &s, "the eligibility rate η_e is a scalar")?;
        eta_e = v;
    } else {
        f.forbid(
            "eta_e",
            &format!("only rule retroactive has an eligibility rate η_e (metadata `{KEY_RULE}` = \"{rname}\")"),
        )?;
    }
    for (name, v) in [("eta", &eta), ("eta_e", &eta_e)] {
        if let Some(&e) = v.first()
            && !(0.0..=1.0).contains(&e)
        {
            return Err(f.err(format!("tensor `{name}` = {e} is out of range: a rate must lie in [0, 1]")));
        }
    }

    let b = match f.take_finite_opt("b")? {
        None => None,
        Some((s, v)) => {
            f.expect_shape("b", &s, &[n], &format!("N = {n} from `w`"))?;
            Some(v)
        }
    };

    // The modulator: K from mod.v; c, F, g optional.
    let mut modulator = ModulatorConfig { activation: mod_act, ..ModulatorConfig::default() };
    let (mut mod_v, mut mod_c, mut fanout, mut fanout_bias) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if rule.is_modulated() {
        if !f.has("mod.v") {
            return Err(f.err(format!(
                "missing required tensor `mod.v` (rule {rname} has a neuromodulator m = μ(V h + c); V is (K, N))"
            )));
        }
        let (vs, v) = f.take_finite("mod.v")?;
        let k = match vs[..] {
            [k, cols] if k > 0 && cols == n => k,
            _ => {
                return Err(f.err(format!(
                    "tensor `mod.v` has shape {}; expected (K, N) with K ≥ 1 and N = {n} from `w`",
                    Shape(vs)
                )));
            }
        };
        mod_v = v;
        modulator.k = k;
        let why_k = format!("K = {k} from `mod.v`");
        let why_n = format!("N = {n} from `w`");
        let why_kn = format!("K = {k} from `mod.v`, N = {n} from `w`");
        modulator.bias = false;
        if let Some((s, v)) = f.take_finite_opt("mod.c")? {
            f.expect_shape("mod.c", &s, &[k], &why_k)?;
            (modulator.bias, mod_c) = (true, v);
        }
        modulator.fanout = false;
        if let Some((s, v)) = f.take_finite_opt("mod.fanout")? {
            f.expect_shape("mod.fanout", &s, &[k, n], &why_kn)?;
            (modulator.fanout, fanout) = (true, v);
        }
        modulator.fanout_bias = false;
        if let Some((s, v)) = f.take_finite_opt("mod.fanout_bias")? {
            f.expect_shape("mod.fanout_bias", &s, &[n], &why_n)?;
            (modulator.fanout_bias, fanout_bias) = (true, v);
        }
    } else {
        for name in ["mod.v", "mod.c", "mod.fanout", "mod.fanout_bias"] {
            f.forbid(name, &format!("rule {rname} has no neuromodulator (metadata `{KEY_RULE}` = \"{rname}\")"))?;
        }
    }

    // head.out: both tensors or neither.
    let head = match (f.has(HEAD_WEIGHT), f.has(HEAD_BIAS)) {
        (false, false) => None,
        (true, false) => {
            return Err(
                f.err(format!("missing tensor `{HEAD_BIAS}`: `{HEAD_WEIGHT}` is present and the head needs both"))
            );
        }
        (false, true) => {
            return Err(
                f.err(format!("missing tensor `{HEAD_WEIGHT}`: `{HEAD_BIAS}` is present and the head needs both"))
            );
        }
        (true, true) => {
            let (bs, bias) = f.take_finite(HEAD_BIAS)?;
            let o = match bs[..] {
                [o] if o > 0 => o,
                _ => {
                    return Err(
                        f.err(format!("tensor `{HEAD_BIAS}` has shape {}; expected (O,) with O ≥ 1", Shape(bs)))
                    );
                }
            };
            let (wsh, weight) = f.take_finite(HEAD_WEIGHT)?;
            f.expect_shape(HEAD_WEIGHT, &wsh, &[o, n], &format!("O = {o} from `{HEAD_BIAS}`, N = {n} from `w`"))?;
            Some(Head { weight, bias })
        }
    };

    let cfg = LayerConfig {
        topology,
        rule,
        n,
        inputs,
        input_map,
        alpha: alpha_shape,
        activation,
        bias: b.is_some(),
        eta: eta_mode,
        modulator,
        clip,
    };
    cfg.validate().map_err(|e| f.err(format!("the configuration the file describes is invalid: {e}")))?;
    let params = Params { w, alpha, eta, eta_e, u, b: b.unwrap_or_default(), mod_v, mod_c, fanout, fanout_bias };
    let model = Model { cfg, params, head };
    model.validate(true).map_err(|e| f.err(format!("inconsistent model: {e}")))?;
    Ok(model)
}

/// Errors on a `neuroplastic.*` metadata key that model files do not use.
fn check_model_keys(f: &TensorFile) -> Result<()> {
    for k in f.metadata.keys() {
        if k.starts_with("neuroplastic.") && !MODEL_KEYS.contains(&k.as_str()) {
            return Err(f.err(format!("unknown metadata key `{k}` (model files use {})", MODEL_KEYS.join(", "))));
        }
    }
    Ok(())
}

/// Reads a model file (`docs/formats.md`).
///
/// Errors name the tensor or metadata key: unknown tensors or
/// `neuroplastic.*` keys, missing required tensors, wrong shapes or dtypes,
/// non-finite values, metadata that contradicts the tensors.
pub fn load_model(path: impl AsRef<Path>) -> Result<Model> {
    let mut f = TensorFile::read(path)?;
    check_model_keys(&f)?;
    let model = take_model(&mut f)?;
    f.finish("model")?;
    Ok(model)
}

/// Writes `model` as a model file, atomically.
pub fn save_model(model: &Model, path: impl AsRef<Path>) -> Result<()> {
    let mut f = TensorFile::new();
    f.path = path.as_ref().display().to_string();
    put_model(&mut f, model)?;
    f.write(path)
}

/// Names of the episode tensors: `inputs`, `targets`, `mask`, then the
/// optional initial state.
pub const EPISODE_NAMES: [&str; 6] = ["inputs", "targets", "mask", "h0", "hebb0", "elig0"];

/// Adds `ep`'s tensors to `file`; `model` fixes the shapes of the state.
pub fn put_episode(file: &mut TensorFile, ep: &Episode, model: &Model) -> Result<()> {
    // inputs: (B, T, X)  targets: (B, T, O)  mask: (B, T)  h0: (B, N)  hebb0, elig0: (B, N, I)
    model.validate_episode(ep, false)?;
    let (b, t) = (ep.batch, ep.steps);
    file.put_f32("inputs", &[b, t, model.cfg.inputs], ep.inputs.clone());
    file.put_f32("targets", &[b, t, model.outputs()], ep.targets.clone());
    file.put_f32("mask", &[b, t], ep.mask.clone());
    if let Some(s) = &ep.init {
        let [h, hebb, elig] = state_shapes(&model.cfg, b);
        for (name, v, shape) in [("h0", &s.h, h), ("hebb0", &s.hebb, hebb), ("elig0", &s.elig, elig)] {
            if !v.is_empty() {
                file.put_f32(name, &shape, v.clone());
            }
        }
    }
    Ok(())
}

/// Removes an episode's tensors from `file` and checks them against `model`.
/// When any of `h0`, `hebb0`, `elig0` is present the episode has an initial
/// state, and the absent parts are zeros.
pub fn take_episode(file: &mut TensorFile, model: &Model) -> Result<Episode> {
    // inputs: (B, T, X)  targets: (B, T, O)  mask: (B, T)  h0: (B, N)  hebb0, elig0: (B, N, I)
    let f = file;
    let cfg = &model.cfg;
    let (x, o, n, pre) = (cfg.inputs, model.outputs(), cfg.n, cfg.pre());
    let (is, inputs) = f.take_finite("inputs")?;
    let x_why = match (cfg.topology, cfg.input_map) {
        (Topology::FeedForward, _) => format!("the model's input size X = I = {x}, from `w`"),
        (_, InputMap::Linear) => format!("the model's input size X = {x}, from `u`"),
        (_, InputMap::Direct) => {
            format!("the model has no `u`, so its input is added to the pre-activation: X = N = {x}")
        }
    };
    let (b, t) = match is[..] {
        [b, t, xx] if b > 0 && t > 0 && xx == x => (b, t),
        _ => {
            return Err(f.err(format!(
                "tensor `inputs` has shape {}; expected (B, T, {x}) with B, T ≥ 1 ({x_why})",
                Shape(is)
            )));
        }
    };
    let (ts, targets) = f.take_finite("targets")?;
    let o_why = match &model.head {
        Some(_) => format!("B = {b}, T = {t} from `inputs`; O = {o} rows of the model's `{HEAD_WEIGHT}`"),
        None => format!("B = {b}, T = {t} from `inputs`; the model has no head, so O = N = {o}"),
    };
    f.expect_shape("targets", &ts, &[b, t, o], &o_why)?;
    let (ms, mask) = f.take_finite("mask")?;
    f.expect_shape("mask", &ms, &[b, t], &format!("B = {b}, T = {t} from `inputs`"))?;

    let [h_shape, hebb_shape, elig_shape] = state_shapes(cfg, b);
    let any_init = ["h0", "hebb0", "elig0"].iter().any(|k| f.has(k));
    let init = if any_init {
        let mut s = State::<f32>::zeros(cfg, b);
        if cfg.topology == Topology::Recurrent {
            if let Some((sh, v)) = f.take_finite_opt("h0")? {
                f.expect_shape("h0", &sh, &h_shape, &format!("B = {b} from `inputs`, N = {n} from the model"))?;
                s.h = v;
            }
        } else {
            f.forbid("h0", "the model is feed-forward and has no hidden state h")?;
        }
        if let Some((sh, v)) = f.take_finite_opt("hebb0")? {
            f.expect_shape(
                "hebb0",
                &sh,
                &hebb_shape,
                &format!("B = {b} from `inputs`, N = {n}, I = {pre} from the model"),
            )?;
            s.hebb = v;
        }
        if cfg.rule.has_eligibility() {
            if let Some((sh, v)) = f.take_finite_opt("elig0")? {
                f.expect_shape(
                    "elig0",
                    &sh,
                    &elig_shape,
                    &format!("B = {b} from `inputs`, N = {n}, I = {pre} from the model"),
                )?;
                s.elig = v;
            }
        } else {
            f.forbid("elig0", &format!("the model's rule {} has no eligibility trace", cfg.rule.name()))?;
        }
        Some(s)
    } else {
        None
    };
    let ep = Episode { batch: b, steps: t, inputs, targets, mask, init };
    model.validate_episode(&ep, true).map_err(|e| f.err(format!("inconsistent episode: {e}")))?;
    Ok(ep)
}

/// Reads an episode file for `model` (docs/formats.md). Errors name the tensor.
pub fn load_episode(path: impl AsRef<Path>, model: &Model) -> Result<Episode> {
    let mut f = TensorFile::read(path)?;
    let ep = take_episode(&mut f, model)?;
    f.finish("episode")?;
    Ok(ep)
}

/// Writes `ep` (an episode for `model`) as an episode file, atomically.
pub fn save_episode(ep: &Episode, model: &Model, path: impl AsRef<Path>) -> Result<()> {
    let mut f = TensorFile::new();
    f.path = path.as_ref().display().to_string();
    put_episode(&mut f, ep, model)?;
    f.write(path)
}

/// Writes a gradients file, atomically: tensor `loss` `(1,)` (the value
/// `loss`, normally `grads.loss`, rounded to f32) and, for every parameter
/// `model` has, its gradient under the parameter's file name (`w`, `alpha`,
/// …, `head.out.weight`, `head.out.bias`), with the model's metadata. The
/// gradient of a fixed η / η_e is written as zero.
pub fn save_gradients(path: impl AsRef<Path>, loss: f64, grads: &ModelGrads, model: &Model) -> Result<()> {
    // loss: (1,); every other tensor has the shape of the model's parameter of the same name.
    model.validate(false)?;
    for ((name, v), (_, shape)) in grads.layer.params.named().into_iter().zip(param_shapes(&model.cfg)) {
        let shape = if shape == [0] { vec![0] } else { shape };
        check_len(&format!("grads.{name}"), v.len(), &shape, || format!("the shape of the model's `{name}`"))?;
    }
    let mut f = TensorFile::new();
    f.path = path.as_ref().display().to_string();
    f.put_f32("loss", &[1], vec![loss as f32]);
    for ((name, v), (_, shape)) in grads.layer.params.named().into_iter().zip(param_shapes(&model.cfg)) {
        if !v.is_empty() {
            f.put_f32(name, &shape, v.clone());
        }
    }
    match (&model.head, &grads.head) {
        (None, _) => {}
        (Some(h), Some(g)) => {
            let o = h.bias.len();
            check_len(&format!("grads.{HEAD_WEIGHT}"), g.weight.len(), &[o, model.cfg.n], String::new)?;
            check_len(&format!("grads.{HEAD_BIAS}"), g.bias.len(), &[o], String::new)?;
            f.put_f32(HEAD_WEIGHT, &[o, model.cfg.n], g.weight.clone());
            f.put_f32(HEAD_BIAS, &[o], g.bias.clone());
        }
        (Some(_), None) => {
            return Err(Error::Config {
                arg: "grads.head".into(),
                message: "the model has a head but the gradients have none".into(),
            });
        }
    }
    f.metadata = model_metadata(&model.cfg);
    f.write(path)
}

/// Reads a gradients file written for `model` (see [`save_gradients`]).
/// The result's `layer.inputs` and `layer.init` are empty: the file holds the
/// loss and the parameter gradients only.
pub fn load_gradients(path: impl AsRef<Path>, model: &Model) -> Result<ModelGrads> {
    // loss: (1,); every other tensor has the shape of the model's parameter of the same name.
    let mut f = TensorFile::read(path)?;
    for (k, v) in model_metadata(&model.cfg) {
        if let Some(got) = f.metadata.get(&k)
            && *got != v
        {
            return Err(f.err(format!("metadata `{k}` = \"{got}\", but the model has \"{v}\"")));
        }
    }
    let (ls, loss) = f.take_f32("loss", None)?;
    f.expect_one("loss", &ls, "the loss is a scalar")?;
    let mut params = Params::<f32>::default();
    for ((name, v), (_, shape)) in params.named_mut().into_iter().zip(param_shapes(&model.cfg)) {
        if shape == [0] {
            continue;
        }
        let (s, g) = f.take_f32(name, None)?;
        let ok = s == shape || (is_one(&shape) && is_one(&s));
        if !ok {
            f.expect_shape(name, &s, &shape, "the shape of the model's parameter")?;
        }
        *v = g;
    }
    let head = match &model.head {
        None => None,
        Some(h) => {
            let o = h.bias.len();
            let (_, weight) = f.take_f32(HEAD_WEIGHT, Some(&[o, model.cfg.n]))?;
            let (_, bias) = f.take_f32(HEAD_BIAS, Some(&[o]))?;
            Some(Head { weight, bias })
        }
    };
    f.finish("gradients")?;
    Ok(ModelGrads {
        loss: loss[0] as f64,
        layer: Gradients { params, inputs: Vec::new(), init: State::default() },
        head,
    })
}

/// `v[key]`, or an error naming the key and the file.
pub(crate) fn json_get<'a>(v: &'a serde_json::Value, key: &str, path: &str) -> Result<&'a serde_json::Value> {
    v.get(key).ok_or_else(|| Error::Format { path: path.into(), message: format!("missing setting `{key}`") })
}
