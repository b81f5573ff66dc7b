//! The core's frame format as a tokio-util codec, for every socket of the
//! node (client port, peer port) and of the Rust client.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::{Buf, BytesMut};
use dynakv::Error;
use dynakv::wire::{FrameCodec, HEADER_LEN, PROTOCOL_VERSION};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// Decodes `In` frames (of any version this build speaks) and encodes
/// `Out` frames at the version its `Speaking` handle says.
pub struct Codec<In, Out> {
    frames: FrameCodec,
    speaking: Speaking,
    scratch: Vec<u8>,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Codec<In, Out> {
    /// A codec encoding at this build's newest version until told.
    pub fn new(max_frame: u32) -> Self {
        Codec {
            frames: FrameCodec::new(max_frame),
            speaking: Speaking::default(),
            scratch: Vec::new(),
            _types: PhantomData,
        }
    }

    /// A handle that sets the version this codec encodes at, kept by the
    /// connection's owner once the codec is inside its writer.
    pub fn speaking(&self) -> Speaking {
        self.speaking.clone()
    }
}

/// The protocol version a connection encodes at: set once its hellos
/// agreed on one.
#[derive(Clone, Debug)]
pub struct Speaking(Arc<AtomicU8>);

impl Default for Speaking {
    fn default() -> Self {
        Speaking(Arc::new(AtomicU8::new(PROTOCOL_VERSION)))
    }
}

impl Speaking {
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, version: u8) {
        self.0.store(version, Ordering::Relaxed)
    }
}

/// A codec failure: the socket broke, or a frame was bad (which ends the
/// connection: after a bad frame the stream cannot be trusted).
#[derive(Debug)]
pub struct CodecError(pub Error);

impl From<io::Error> for CodecError {
    fn from(e: io::Error) -> Self {
        CodecError(Error::Unavailable(format!("connection: {e}")))
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<In: DeserializeOwned, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.frames.decode::<In>(src).map_err(CodecError)? {
            Some((msg, used)) => {
                src.advance(used);
                Ok(Some(msg))
            }
            None => {
                // Reserve for the rest of the frame once its length is known.
                if let Ok(Some(total)) = self.frames.frame_len(src) {
                    src.reserve(total.saturating_sub(src.len()));
                } else {
                    src.reserve(HEADER_LEN);
                }
                Ok(None)
            }
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.scratch.clear();
        self.frames
            .at(self.speaking.get())
            .encode(&item, &mut self.scratch)
            .map_err(CodecError)?;
        dst.extend_from_slice(&self.scratch);
        Ok(())
    }
}
