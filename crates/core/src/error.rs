//! The one error type of the engine: every fallible call names the operation.

use crate::memory::FreedBy;
use tch::TchError;

/// What a use of a parameter that ZeRO stage 3 released is told (also appended to libtorch's
/// errors about a tensor without storage).
pub const SHARDED: &str =
    "this parameter is sharded by ZeRO stage 3: it is whole only during its module's forward and backward; \
read parameters through accelerator.getStateDict(model), and write them with model.loadStateDict on every process";

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libtorch rejected an operation; `detail` is the first line of its message.
    #[error("{op}: {detail}{}", shapes_suffix(.shapes))]
    Torch {
        op: String,
        detail: String,
        shapes: Vec<Vec<i64>>,
    },
    /// A precondition we check ourselves (shapes, ranges, names).
    #[error("{op}: {message}")]
    Invalid { op: String, message: String },
    /// The tensor's memory was released earlier; `by` says what released it.
    #[error("{op}: {by}")]
    Disposed { op: String, by: FreedBy },
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

fn shapes_suffix(shapes: &[Vec<i64>]) -> String {
    match shapes.len() {
        0 => String::new(),
        1 => format!(" (shape {:?})", shapes[0]),
        _ => {
            let list: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
            format!(" (shapes {})", list.join(" and "))
        }
    }
}

impl Error {
    pub fn invalid(op: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            op: op.into(),
            message: message.into(),
        }
    }

    /// Wraps a libtorch error, keeping only the first line of its message (the rest is a C++ backtrace).
    /// libtorch's error for a tensor without storage (a ZeRO-3 parameter outside its
    /// module's forward and backward) gains a line that says what happened.
    pub fn torch(op: impl Into<String>, shapes: Vec<Vec<i64>>, err: TchError) -> Error {
        let text = match err {
            TchError::Torch(msg) => msg,
            other => other.to_string(),
        };
        let mut detail = text.lines().next().unwrap_or("").trim().to_string();
        if detail.contains("storage of size 0") || detail.contains("data is not allocated yet") {
            detail.push_str(&format!(" ({SHARDED})"));
        }
        Error::Torch {
            op: op.into(),
            detail,
            shapes,
        }
    }

    /// A `map_err` adapter for libtorch errors of operation `op` on `t` (whose shape it names).
    pub fn on(op: &str, t: &tch::Tensor) -> impl Fn(TchError) -> Error {
        let (op, shape) = (op.to_string(), t.size());
        move |e| Error::torch(op.clone(), vec![shape.clone()], e)
    }

    pub fn io(op: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { op: op.into(), source }
    }

    /// The operation named by this error.
    pub fn op(&self) -> &str {
        match self {
            Error::Torch { op, .. } | Error::Invalid { op, .. } | Error::Disposed { op, .. } | Error::Io { op, .. } => {
                op
            }
        }
    }
}
