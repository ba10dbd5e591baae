//! The embedding model: its contract (`models/<name>.toml`), checked before anything runs,
//! and its ONNX session on one of two backends. tract (pure Rust, through `ort-tract`) is
//! the default; the real ONNX Runtime is loaded from a `libonnxruntime.so` when one is
//! named. The backend is chosen once per process (ort keeps one global API table), so a
//! process that loaded one cannot switch to the other.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::scan::verdict::ModelRef;

/// Why a model cannot be used. Every variant names the file and what to do: the node
/// refuses to start with it rather than match with the wrong model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model contract {path}: {source}")]
    ReadContract {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model contract {path} is not valid: {message}")]
    Contract { path: PathBuf, message: String },
    #[error("cannot read model file {path} (named by {contract}): {source}")]
    ReadModel {
        path: PathBuf,
        contract: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} has sha256 {actual}, but its contract {contract} says {expected}; the file was changed or replaced: restore it, or update the contract if the new model is intended")]
    Sha256 {
        path: PathBuf,
        contract: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model {path}: {what} is {actual}, but its contract {contract} says {expected}")]
    Shape {
        path: PathBuf,
        contract: PathBuf,
        what: String,
        actual: String,
        expected: String,
    },
    #[error("cannot load ONNX Runtime from {path}: {message} (install the library as README \"ONNX Runtime\" says, or set matching.backend = \"tract\")")]
    Runtime { path: PathBuf, message: String },
    #[error("this process already runs the {active} backend; {asked} cannot be loaded beside it (ort keeps one runtime per process)")]
    BackendClash { active: String, asked: String },
    #[error("model {path} cannot be loaded by the {backend} backend: {message}")]
    Load {
        path: PathBuf,
        backend: String,
        message: String,
    },
    #[error("model {name} failed to run: {message}")]
    Run { name: String, message: String },
}

fn contract_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Contract {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `models/<name>.toml`, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub model: ModelInfo,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// How the model was measured when it was made (free form, shown by `library list`).
    #[serde(default)]
    pub evaluation: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// The ONNX file, relative to the contract's folder.
    pub file: String,
    pub sha256: String,
    pub licence: String,
    pub provenance: String,
}

/// Model input: attenuation after taking out the scan's dark level.
pub const NORMALISATION_DARK: &str = "attenuation-dark";
/// Model input: attenuation as the image gives it.
pub const NORMALISATION_RAW: &str = "attenuation";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// `[-1, 1, tile, tile]`: -1 is the batch dimension.
    pub shape: Vec<i64>,
    pub layout: String,
    pub dtype: String,
    /// [`NORMALISATION_DARK`]: ln((I_air − dark) / (I − dark)) with the scan's own dark level
    /// ([`super::photometry`]), clipped to `clip`; [`NORMALISATION_RAW`]: ln(I_air / I), for
    /// models made before the dark level was measured.
    pub normalisation: String,
    pub clip: [f32; 2],
    /// Tiles are cut from the image resampled to this pixel size (mm), both axes.
    pub pixel_mm: f32,
    pub tile: u32,
    pub stride: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub dim: usize,
}

impl ModelSpec {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::ReadContract {
            path: path.to_path_buf(),
            source,
        })?;
        let spec: ModelSpec =
            toml::from_str(&text).map_err(|e| contract_err(path, e.to_string()))?;
        spec.check(path)?;
        Ok(spec)
    }

    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let i = &self.input;
        let normalisation_known =
            i.normalisation == NORMALISATION_DARK || i.normalisation == NORMALISATION_RAW;
        if i.layout != "NCHW" || i.dtype != "float32" || !normalisation_known {
            return Err(contract_err(
                path,
                format!(
                    "input layout/dtype/normalisation = {}/{}/{}: this node supports NCHW/float32/{NORMALISATION_DARK} (or {NORMALISATION_RAW})",
                    i.layout, i.dtype, i.normalisation
                ),
            ));
        }
        let t = i64::from(i.tile);
        if i.shape.len() != 4 || i.shape[1] != 1 || i.shape[2] != t || i.shape[3] != t {
            return Err(contract_err(
                path,
                format!(
                    "input.shape = {:?}: expected [-1, 1, {t}, {t}] (one channel, tile x tile)",
                    i.shape
                ),
            ));
        }
        if !(8..=1024).contains(&i.tile) || i.stride == 0 || i.stride > i.tile {
            return Err(contract_err(
                path,
                format!(
                    "input.tile = {}, input.stride = {}: tile must be 8..1024 and stride 1..tile",
                    i.tile, i.stride
                ),
            ));
        }
        if !(i.pixel_mm > 0.5 && i.pixel_mm < 200.0) || i.clip[0] >= i.clip[1] {
            return Err(contract_err(
                path,
                "input.pixel_mm must be in (0.5, 200) and input.clip an increasing pair",
            ));
        }
        if self.output.dim == 0 || self.output.dim > 4096 {
            return Err(contract_err(path, "output.dim must be 1..4096"));
        }
        if self.model.sha256.len() != 64
            || !self.model.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(contract_err(path, "model.sha256 must be 64 hex digits"));
        }
        Ok(())
    }
}

/// Which ONNX engine runs the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Pure Rust (tract through ort-tract): builds and runs anywhere, nothing to install.
    Tract,
    /// Microsoft's ONNX Runtime, loaded from this `libonnxruntime.so` (>= 1.24).
    OnnxRuntime { library: PathBuf },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::OnnxRuntime { .. } => "onnxruntime",
        }
    }
}

/// The backend this process initialised, and its environment (kept for the process's life:
/// sessions borrow it).
static RUNTIME: OnceLock<Result<(Backend, ort::environment::Environment), String>> =
    OnceLock::new();

fn environment(backend: &Backend) -> Result<&'static ort::environment::Environment, ModelError> {
    let got = RUNTIME.get_or_init(|| {
        let env = match backend {
            Backend::Tract => {
                ort::set_api(ort_tract::api());
                ort::init().build().map_err(|e| e.to_string())
            }
            Backend::OnnxRuntime { library } => ort::init_from(library)
                .map_err(|e| e.to_string())
                .and_then(|b| b.build().map_err(|e| e.to_string())),
        };
        env.map(|e| (backend.clone(), e))
    });
    match got {
        Ok((active, env)) if active == backend => Ok(env),
        Ok((active, _)) => Err(ModelError::BackendClash {
            active: format!("{active:?}"),
            asked: format!("{backend:?}"),
        }),
        Err(message) => match backend {
            Backend::OnnxRuntime { library } => Err(ModelError::Runtime {
                path: library.clone(),
                message: message.clone(),
            }),
            Backend::Tract => Err(ModelError::Load {
                path: PathBuf::from("(tract)"),
                backend: "tract".into(),
                message: message.clone(),
            }),
        },
    }
}

/// A loaded, checked model. Inference is serialised by a mutex: one scan's batches run at a
/// time, and the pipeline is sequential anyway.
pub struct EmbeddingModel {
    pub spec: ModelSpec,
    pub contract: PathBuf,
    pub backend: Backend,
    session: Mutex<ort::session::Session>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("name", &self.spec.model.name)
            .field("version", &self.spec.model.version)
            .field("backend", &self.backend.name())
            .finish()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl EmbeddingModel {
    /// Reads the contract at `contract`, checks the model file's sha256, loads it on
    /// `backend`, and checks its input and output shapes against the contract with one
    /// trial run. Blocking: call off the async runtime.
    pub fn load(contract: &Path, backend: Backend) -> Result<Self, ModelError> {
        let spec = ModelSpec::load(contract)?;
        let dir = contract.parent().unwrap_or(Path::new("."));
        let path = dir.join(&spec.model.file);
        let bytes = std::fs::read(&path).map_err(|source| ModelError::ReadModel {
            path: path.clone(),
            contract: contract.to_path_buf(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&spec.model.sha256) {
            return Err(ModelError::Sha256 {
                path,
                contract: contract.to_path_buf(),
                expected: spec.model.sha256.clone(),
                actual,
            });
        }
        let env = environment(&backend)?;
        let load_err = |e: ort::Error| ModelError::Load {
            path: path.clone(),
            backend: backend.name().into(),
            message: e.to_string(),
        };
        let mut builder = ort::session::Session::builder(env).map_err(load_err)?;
        if let Backend::OnnxRuntime { .. } = backend {
            // Two cores on the target boxes: ingest decodes on the other.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| load_err(e.into()))?;
        }
        let session = builder.commit_from_memory(&bytes).map_err(load_err)?;
        let shape_err = |what: &str, actual: String, expected: String| ModelError::Shape {
            path: path.clone(),
            contract: contract.to_path_buf(),
            what: what.to_string(),
            actual,
            expected,
        };
        let inputs = session.inputs();
        if inputs.len() != 1 || inputs[0].name() != spec.input.name {
            let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
            return Err(shape_err(
                "its inputs",
                format!("{names:?}"),
                format!("one input named {:?}", spec.input.name),
            ));
        }
        if let Some(shape) = inputs[0].dtype().tensor_shape() {
            let got: Vec<i64> = shape.to_vec();
            // The batch dimension may be symbolic (-1) or fixed; the others must match.
            let fixed_match = got.len() == 4 && got[1..] == spec.input.shape[1..];
            if !fixed_match {
                return Err(shape_err(
                    &format!("input {:?} shape", spec.input.name),
                    format!("{got:?}"),
                    format!("{:?}", spec.input.shape),
                ));
            }
        }
        let model = EmbeddingModel {
            spec,
            contract: contract.to_path_buf(),
            backend,
            session: Mutex::new(session),
        };
        // One trial tile: the output must be [1, dim].
        let t = model.spec.input.tile as usize;
        let out = model.run_batch(&vec![0.0f32; t * t], 1)?;
        if out.len() != model.spec.output.dim {
            return Err(shape_err(
                "output size for one tile",
                out.len().to_string(),
                model.spec.output.dim.to_string(),
            ));
        }
        Ok(model)
    }

    pub fn reference(&self) -> ModelRef {
        ModelRef {
            name: self.spec.model.name.clone(),
            version: self.spec.model.version.clone(),
            sha256: self.spec.model.sha256.to_ascii_lowercase(),
        }
    }

    pub fn dim(&self) -> usize {
        self.spec.output.dim
    }

    /// Runs `n` tiles (`n * tile * tile` values, NCHW with one channel) and returns `n * dim`
    /// raw embeddings (not normalised).
    pub fn run_batch(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.spec.input.tile as usize;
        let run_err = |m: String| ModelError::Run {
            name: self.spec.model.name.clone(),
            message: m,
        };
        if tiles.len() != n * t * t {
            return Err(run_err(format!(
                "{} values for {n} tiles of {t}x{t}",
                tiles.len()
            )));
        }
        let input = ort::value::TensorRef::from_array_view(([n, 1, t, t], tiles))
            .map_err(|e| run_err(e.to_string()))?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![self.spec.input.name.as_str() => input])
            .map_err(|e| run_err(e.to_string()))?;
        let (shape, data) = outputs[self.spec.output.name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err(e.to_string()))?;
        let dim = self.spec.output.dim;
        if shape.len() != 2 || shape[0] as usize != n || shape[1] as usize != dim {
            return Err(run_err(format!(
                "output {:?} has shape {:?}; expected [{n}, {dim}]",
                self.spec.output.name,
                shape.to_vec()
            )));
        }
        Ok(data.to_vec())
    }
}
