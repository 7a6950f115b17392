//! Channels whose messages travel boxed.
//!
//! Room: the plumbing between a call and the rooms that talk to it (the SIP
//! worker, the desk, the API, the media engine). It touches nothing else.
//! tokio's mpsc allocates a channel's slots in blocks of 32 values, at its
//! first message, whatever its capacity: a per-call channel of a 40-byte
//! enum holds 1.3 KiB for the whole call, and a call has several. Boxed, a
//! slot is one pointer (a block is 288 bytes), and each message costs one
//! allocation when it is sent; these channels carry a handful of messages
//! per call, never packets. The API mirrors tokio's: `send` and `recv` take
//! and give the message itself.

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

/// A bounded channel of boxed messages.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Sender(tx), Receiver(rx))
}

/// An unbounded channel of boxed messages.
pub fn unbounded_channel<T>() -> (UnboundedSender<T>, UnboundedReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (UnboundedSender(tx), UnboundedReceiver(rx))
}

/// The sending half of [`channel`].
#[derive(Debug)]
pub struct Sender<T>(mpsc::Sender<Box<T>>);

// Not derived: a derive would ask `T: Clone`.
impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<T> Sender<T> {
    /// Sends, waiting for room; gives the message back if the receiver is gone.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.0
            .send(Box::new(value))
            .await
            .map_err(|e| SendError(*e.0))
    }

    /// Sends if there is room now.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.0.try_send(Box::new(value)).map_err(|e| match e {
            TrySendError::Full(v) => TrySendError::Full(*v),
            TrySendError::Closed(v) => TrySendError::Closed(*v),
        })
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Whether both send to the same channel.
    pub fn same_channel(&self, other: &Sender<T>) -> bool {
        self.0.same_channel(&other.0)
    }
}

/// The receiving half of [`channel`].
#[derive(Debug)]
pub struct Receiver<T>(mpsc::Receiver<Box<T>>);

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and it is empty.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|b| *b)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|b| *b)
    }

    /// Refuses further messages; those already sent can still be received.
    pub fn close(&mut self) {
        self.0.close();
    }
}

/// The sending half of [`unbounded_channel`].
#[derive(Debug)]
pub struct UnboundedSender<T>(mpsc::UnboundedSender<Box<T>>);

impl<T> Clone for UnboundedSender<T> {
    fn clone(&self) -> Self {
        UnboundedSender(self.0.clone())
    }
}

impl<T> UnboundedSender<T> {
    /// Sends; gives the message back if the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.0.send(Box::new(value)).map_err(|e| SendError(*e.0))
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// The receiving half of [`unbounded_channel`].
#[derive(Debug)]
pub struct UnboundedReceiver<T>(mpsc::UnboundedReceiver<Box<T>>);

impl<T> UnboundedReceiver<T> {
    /// The next message; `None` once every sender is gone and it is empty.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|b| *b)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_come_back_when_nobody_listens() {
        let (tx, mut rx) = channel::<[u64; 8]>(2);
        tx.send([1; 8]).await.expect("open");
        tx.try_send([2; 8]).expect("room");
        assert!(matches!(tx.try_send([3; 8]), Err(TrySendError::Full(v)) if v == [3; 8]));
        assert_eq!(rx.recv().await, Some([1; 8]));
        assert_eq!(rx.try_recv(), Ok([2; 8]));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send([4; 8]).await.map_err(|e| e.0), Err([4; 8]));

        let (tx, mut rx) = unbounded_channel::<String>();
        tx.send("a".into()).expect("open");
        drop(tx);
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        assert_eq!(rx.recv().await, None);
    }
}
