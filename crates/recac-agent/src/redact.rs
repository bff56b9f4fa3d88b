//! Removes credentials from everything the agent prints, logs, reports or hands to a model.
//!
//! The redaction itself is [`recac_redact`]'s (shared with the operator): the exact values of
//! the credentials the agent was given, in their common encodings and even when split across
//! lines, and the shapes of well-known tokens. This module adds the writers that put it in front
//! of the logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use recac_redact::{MASK, Redactor};

/// A writer that redacts each write before passing it on. `tracing_subscriber::fmt` writes
/// one whole event per call, so secrets are never split across writes.
pub struct RedactingWriter<W: Write> {
    redactor: Redactor,
    inner: W,
}

impl<W: Write> RedactingWriter<W> {
    pub fn new(redactor: Redactor, inner: W) -> Self {
        Self { redactor, inner }
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = self.redactor.redact_bytes(buf);
        self.inner.write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A `MakeWriter` for `tracing_subscriber` that redacts everything written to stderr.
#[derive(Clone)]
pub struct RedactingStderr {
    redactor: Redactor,
}

impl RedactingStderr {
    pub fn new(redactor: Redactor) -> Self {
        Self { redactor }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.redactor.clone(), std::io::stderr())
    }
}

/// A `MakeWriter` that redacts into a shared buffer (for tests and for capturing logs).
#[derive(Clone)]
pub struct RedactingBuffer {
    redactor: Redactor,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl RedactingBuffer {
    pub fn new(redactor: Redactor) -> Self {
        Self {
            redactor,
            buffer: Arc::default(),
        }
    }

    /// Everything written so far.
    pub fn contents(&self) -> String {
        let guard = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&guard).into_owned()
    }
}

/// Writes into a [`RedactingBuffer`].
pub struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingBuffer {
    type Writer = RedactingWriter<BufferWriter>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.redactor.clone(), BufferWriter(self.buffer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_redacts() {
        let buf = RedactingBuffer::new(Redactor::new(["topsecretvalue"]));
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&buf);
        w.write_all(b"a topsecretvalue b").unwrap();
        assert_eq!(buf.contents(), format!("a {MASK} b"));
    }
}
