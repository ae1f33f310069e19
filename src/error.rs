//! The one error type of the crate. Every variant carries the context a user needs to act:
//! which op or file, what was expected and what was found, which GPU limit and its value.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shape as printed in error messages: `(2, 3, 67, 131)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeText(pub Vec<usize>);

impl fmt::Display for ShapeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() == 1 {
            write!(f, ",")?;
        }
        write!(f, ")")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input tensor has the wrong shape for an op.
    #[error("{op}: {what} has shape {got}, expected {expected}")]
    Shape {
        op: &'static str,
        what: String,
        expected: String,
        got: ShapeText,
    },

    /// An op argument (not a shape) is out of range.
    #[error("{op}: {message}")]
    InvalidArgument { op: &'static str, message: String },

    /// A size exceeds what the adapter reports it can do.
    #[error("{op}: {what} needs {needed} but the adapter's `{limit}` is {value}; {hint}")]
    Limit {
        op: &'static str,
        what: String,
        limit: &'static str,
        value: u64,
        needed: u64,
        hint: &'static str,
    },

    /// No usable GPU adapter.
    #[error("no WebGPU adapter was found ({0}); on Linux without a GPU install Mesa's lavapipe: `apt-get install mesa-vulkan-drivers libvulkan1`")]
    NoAdapter(String),

    /// The adapter refused the device request.
    #[error("the GPU adapter refused to create a device: {0}")]
    RequestDevice(String),

    /// wgpu reported a validation or out-of-memory error; this is a bug in the engine or an
    /// exhausted GPU, never silently ignored.
    #[error("GPU error during {context}: {message}")]
    Gpu { context: String, message: String },

    /// Mapping a buffer for reading failed.
    #[error("reading a GPU buffer back failed: {0}")]
    Readback(String),

    /// A tensor lives on another backend than the one running the op.
    #[error("{op}: input {index} lives on the {got} backend, but this executor runs on {expected}; move it with `Exec::upload` or `Exec::read`")]
    Backend {
        op: &'static str,
        index: usize,
        expected: &'static str,
        got: &'static str,
    },

    /// A diffusers `scheduler_config.json` (or a config built in code) that the schedules
    /// cannot use: names the file, the key and what is wrong, listing valid values.
    #[error("scheduler config {file}: {}{message}", if key.is_empty() { String::new() } else { format!("`{key}` ") })]
    SchedulerConfig {
        file: String,
        key: String,
        message: String,
    },

    /// A shader the engine needs is not embedded (a build problem).
    #[error("shader `{0}` is not embedded in this build; rebuild the crate")]
    MissingShader(String),

    /// A weights file (safetensors, or its shard index) is truncated, malformed or uses
    /// something this engine does not read. `tensor` names the entry when one is at fault.
    #[error("{file}{}: expected {expected}, got {got}; {hint}", tensor_part(.tensor))]
    WeightsFormat {
        file: String,
        tensor: Option<String>,
        expected: String,
        got: String,
        hint: &'static str,
    },

    /// A tensor in the weights has another shape than the model config implies.
    #[error(
        "{file}: tensor `{tensor}` has shape {got}, but the model config needs {expected}; {hint}"
    )]
    WeightShape {
        file: String,
        tensor: String,
        expected: ShapeText,
        got: ShapeText,
        hint: &'static str,
    },

    /// Tensors the model needs are not in the weights (`names` holds the first few).
    #[error("{file}: {count} tensor(s) the model needs are missing: {}; {hint}", name_list(.names, *.count))]
    MissingTensors {
        file: String,
        names: Vec<String>,
        count: usize,
        hint: &'static str,
    },

    /// The weights hold tensors the model does not use (`names` holds the first few).
    #[error("{file}: {count} tensor(s) are not used by the model: {}; {hint}", name_list(.names, *.count))]
    UnexpectedTensors {
        file: String,
        names: Vec<String>,
        count: usize,
        hint: &'static str,
    },

    /// A weight tensor holds NaN or infinite values.
    #[error("{file}: tensor `{tensor}` holds {count} non-finite value(s), the first at flat index {first_index} ({first_value}); {hint}")]
    NonFiniteWeights {
        file: String,
        tensor: String,
        count: usize,
        first_index: usize,
        first_value: f32,
        hint: &'static str,
    },

    /// Reading a file failed.
    #[error("{file}: {message}; {hint}")]
    Io {
        file: String,
        message: String,
        hint: &'static str,
    },

    /// A model `config.json` has a value this engine cannot run (or cannot parse).
    #[error("{file}: config key `{key}`: expected {expected}, got {got}; {hint}")]
    Config {
        file: String,
        key: String,
        expected: String,
        got: String,
        hint: String,
    },
}

/// How many names a missing/unexpected-tensor error lists before "and N more".
pub const LISTED_NAMES: usize = 8;

fn tensor_part(tensor: &Option<String>) -> String {
    match tensor {
        Some(t) => format!(": tensor `{t}`"),
        None => String::new(),
    }
}

fn name_list(names: &[String], count: usize) -> String {
    let mut s = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if count > names.len() {
        s.push_str(&format!(" and {} more", count - names.len()));
    }
    s
}

impl Error {
    pub(crate) fn shape(
        op: &'static str,
        what: impl Into<String>,
        expected: impl Into<String>,
        got: &[usize],
    ) -> Self {
        Error::Shape {
            op,
            what: what.into(),
            expected: expected.into(),
            got: ShapeText(got.to_vec()),
        }
    }

    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            message: message.into(),
        }
    }
}
