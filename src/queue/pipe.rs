//! [`Pipe`]: a pair of connected endpoints, like Python's `multiprocessing.Pipe`.

use std::time::{Duration, Instant};

use super::Queue;
use crate::codec::{Codec, Serde};
use crate::error::{Error, Result};

/// Creates connected [`Connection`] pairs.
///
/// # Examples
/// ```
/// let (a, b) = mproc::Pipe::duplex::<String>()?;
/// a.send(&"ping".to_string())?;
/// assert_eq!(b.recv()?, "ping");
/// b.send(&"pong".to_string())?;
/// assert!(a.poll(std::time::Duration::from_secs(1)));
/// assert_eq!(a.recv()?, "pong");
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// Messages each direction holds before `send` waits.
    pub const DEFAULT_CAPACITY: usize = 64;

    /// Two endpoints that can both send and receive (Python's `Pipe(duplex=True)`).
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn duplex<T: serde::Serialize + serde::de::DeserializeOwned>(
    ) -> Result<(Connection<T>, Connection<T>)> {
        Self::duplex_with::<T, Serde>(
            Self::DEFAULT_CAPACITY,
            <Serde as Codec<T>>::default_max_size(),
        )
    }

    /// Like [`Pipe::duplex`] with a codec, a capacity and a maximum message size.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn duplex_with<T, C: Codec<T>>(
        capacity: usize,
        max_message: usize,
    ) -> Result<(Connection<T, C>, Connection<T, C>)> {
        let ab = Queue::with_max_message(capacity, max_message)?;
        let ba = Queue::with_max_message(capacity, max_message)?;
        Ok((
            Connection {
                rx: Some(ba.clone()),
                tx: Some(ab.clone()),
            },
            Connection {
                rx: Some(ab),
                tx: Some(ba),
            },
        ))
    }

    /// A receive-only and a send-only endpoint (Python's `Pipe(duplex=False)`), in that order.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn one_way<T: serde::Serialize + serde::de::DeserializeOwned>(
    ) -> Result<(Connection<T>, Connection<T>)> {
        let q = Queue::new(Self::DEFAULT_CAPACITY)?;
        Ok((
            Connection {
                rx: Some(q.clone()),
                tx: None,
            },
            Connection {
                rx: None,
                tx: Some(q),
            },
        ))
    }
}

/// One end of a [`Pipe`]. Serializable, so it can be handed to a spawned process.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub struct Connection<T, C: Codec<T> = Serde> {
    rx: Option<Queue<T, C>>,
    tx: Option<Queue<T, C>>,
}

impl<T, C: Codec<T>> Connection<T, C> {
    fn rx(&self) -> Result<&Queue<T, C>> {
        self.rx.as_ref().ok_or(Error::ProcessState(
            "this end of the pipe cannot receive".into(),
        ))
    }

    fn tx(&self) -> Result<&Queue<T, C>> {
        self.tx.as_ref().ok_or(Error::ProcessState(
            "this end of the pipe cannot send".into(),
        ))
    }

    /// Sends a message to the other end, waiting while its buffer is full.
    ///
    /// # Errors
    /// [`Error::Closed`] if either end closed, [`Error::MessageTooLarge`], [`Error::Encode`].
    pub fn send(&self, value: &T) -> Result<()> {
        self.tx()?.put(value)
    }

    /// Receives the next message, waiting for one.
    ///
    /// # Errors
    /// [`Error::Closed`] once the other end closed and everything sent was received; [`Error::Decode`].
    pub fn recv(&self) -> Result<T> {
        self.rx()?.get()
    }

    /// Receives within `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`], and as [`Connection::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.rx()?.get_timeout(timeout)
    }

    /// Whether a message can be received, waiting at most `timeout` for one.
    pub fn poll(&self, timeout: Duration) -> bool {
        self.rx
            .as_ref()
            .is_some_and(|q| q.wait_nonempty(Some(Instant::now() + timeout)))
    }

    /// Closes both directions for both ends.
    pub fn close(&self) {
        for q in [&self.rx, &self.tx].into_iter().flatten() {
            q.close();
        }
    }
}
