//! A shard's writes for one round handed to the kernel together, through io_uring: a few
//! `io_uring_enter` calls for all its listeners instead of one `writev` system call each.
//!
//! Each write is a `send` (one slice, as a live listener's write of one frame is) or a
//! `sendmsg` (several) with `MSG_DONTWAIT`, so io_uring tries it once, during the submission,
//! and completes it there with what the socket took, or with `EAGAIN`: no write is left queued
//! in the kernel (as it would be, waiting for room, without the flag, socket non-blocking or
//! not), and nothing waits for a listener. (Socket sends rather than `writev`: they go straight
//! to the socket, without the file-write path's checks and notifications: 11 % of the
//! fan-out's CPU samples at 1,000 listeners, against 4 % for `sendmsg`'s own; `send` also
//! skips copying in a message header and its vector.) Each completion is waited for before
//! the call returns, so the buffers written from only need to live through it.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use io_uring::{IoUring, opcode, types};

/// Writes per submission (the submission queue's size): a shard's whole round up to this
/// many listeners. A round split over several submissions gives the scheduler a point between
/// them to run something else while the rest of the shard's listeners wait.
const ENTRIES: u32 = 2048;
/// Slots of the ring's file table: listeners in higher slots are sent to by descriptor.
const FILES: u32 = 16_384;

pub struct Ring {
    ring: IoUring,
    /// An error of the ring itself may have left writes in its queue, pointing at buffers
    /// that are gone: it is not entered again.
    failed: bool,
    /// The descriptor registered at each slot of the ring's file table (a listener's slot in
    /// its shard), or -1; empty where the kernel has no such table. A send to a registered
    /// socket names its slot, and skips taking and dropping a reference to the socket's file
    /// (about 2 % of the fan-out's CPU at 1,000 listeners).
    files: Vec<RawFd>,
}

impl Ring {
    pub fn new() -> io::Result<Ring> {
        Ring::with_entries(ENTRIES)
    }

    /// A ring, once a write through it to a socket pair has worked (a sandbox may let a ring
    /// be set up and still refuse its use).
    fn with_entries(entries: u32) -> io::Result<Ring> {
        let mut ring = Ring {
            ring: IoUring::new(entries)?,
            failed: false,
            files: Vec::new(),
        };
        // The table may not have more slots than this process may have descriptors.
        let files = u32::try_from(open_files_limit())
            .unwrap_or(u32::MAX)
            .min(FILES);
        match ring.ring.submitter().register_files_sparse(files) {
            Ok(()) => ring.files = vec![-1; files as usize],
            Err(error) => {
                tracing::debug!("no io_uring file table: sends name descriptors ({error})")
            }
        }
        let (writer, mut reader) = UnixStream::pair()?;
        let mut results = Vec::new();
        ring.write_each(
            [(NO_SLOT, writer.as_raw_fd(), &[IoSlice::new(b"?")][..])],
            &mut results,
        )?;
        results.pop().unwrap_or(Ok(0))?;
        reader.read_exact(&mut [0])?;
        Ok(ring)
    }

    /// Registers `fd` at `slot` of the ring's file table, if it has one and the slot is in it:
    /// writes to `fd` from that slot then name the slot. The socket must be
    /// [`Ring::unregister`]ed before it is closed.
    pub fn register(&mut self, slot: usize, fd: RawFd) {
        let Some(entry) = self.files.get_mut(slot) else {
            return;
        };
        match self
            .ring
            .submitter()
            .register_files_update(slot as u32, &[fd])
        {
            Ok(_) => *entry = fd,
            Err(error) => {
                tracing::debug!("a listener's socket is not in the io_uring file table: {error}")
            }
        }
    }

    /// Takes `slot`'s socket out of the ring's file table, if it is there: the table holds a
    /// reference of its own to the socket, which would keep it open after its descriptor is
    /// closed.
    pub fn unregister(&mut self, slot: usize) {
        let Some(entry) = self.files.get_mut(slot).filter(|fd| **fd >= 0) else {
            return;
        };
        *entry = -1;
        if let Err(error) = self
            .ring
            .submitter()
            .register_files_update(slot as u32, &[-1])
        {
            tracing::error!(
                "cannot take a listener's socket out of the io_uring file table, which keeps its connection open until the fan-out thread ends: {error}"
            );
        }
    }

    /// Writes each `(slot, descriptor, slices)` of `writes` as `writev` would (naming the slot
    /// of the ring's file table where the descriptor is registered there), and puts what each
    /// wrote in `results`, in the same order. A write's error is its result. An error of the
    /// ring itself ends the call: the writes it had submitted without their completion have
    /// `ECANCELED` (what they sent is unknown), and those it had not submitted have no result.
    pub fn write_each<'a>(
        &mut self,
        writes: impl IntoIterator<Item = (usize, RawFd, &'a [IoSlice<'a>])>,
        results: &mut Vec<io::Result<usize>>,
    ) -> io::Result<()> {
        results.clear();
        if self.failed {
            return Err(io::Error::other("the ring failed before"));
        }
        let mut writes = writes.into_iter().peekable();
        let batch = self.ring.params().sq_entries() as usize;
        // The message headers of the sends with several slices. Room for a whole submission's
        // is reserved before the first is made, so that none moves while the kernel may read
        // it; a round whose writes are all one slice (most are) allocates none.
        let mut messages: Vec<libc::msghdr> = Vec::new();
        // A full socket completes at once with EAGAIN (without DONTWAIT the kernel would queue
        // the send and wait for room); a closed one fails, without SIGPIPE.
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        while writes.peek().is_some() {
            let first = results.len();
            messages.clear();
            {
                let mut queue = self.ring.submission();
                for (slot, fd, slices) in writes.by_ref().take(batch) {
                    let whole = whole(slices);
                    let message = if whole.is_none() {
                        if messages.capacity() == 0 {
                            messages.reserve_exact(batch);
                        }
                        // SAFETY: msghdr is plain data; all-zero is an empty header, filled in
                        // here.
                        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
                        // IoSlice is ABI-compatible with iovec on Unix; sendmsg only reads them.
                        message.msg_iov = slices.as_ptr().cast_mut().cast();
                        message.msg_iovlen = slices.len();
                        messages.push(message);
                        // Through the buffer's pointer, which pushes within the capacity keep
                        // valid, not through a borrow of the element.
                        messages.as_ptr().wrapping_add(messages.len() - 1)
                    } else {
                        std::ptr::null()
                    };
                    // The same send, to the slot of the file table or to the descriptor.
                    macro_rules! send_to {
                        ($target:expr) => {
                            match whole {
                                Some((buffer, len)) => {
                                    opcode::Send::new($target, buffer, len).flags(flags).build()
                                }
                                None => opcode::SendMsg::new($target, message)
                                    .flags(flags as u32)
                                    .build(),
                            }
                        };
                    }
                    let entry = if self.files.get(slot) == Some(&fd) {
                        send_to!(types::Fixed(slot as u32))
                    } else {
                        send_to!(types::Fd(fd))
                    }
                    .user_data(results.len() as u64);
                    // SAFETY: the slices are borrowed for this whole call, the headers stay
                    // where they are until every send of the submission is completed (below),
                    // and so does the call before it returns.
                    unsafe { queue.push(&entry) }.expect("a batch fits the queue");
                    results.push(Err(io::Error::from_raw_os_error(libc::ECANCELED)));
                }
            }
            let mut outstanding = results.len() - first;
            while outstanding > 0 {
                match self.ring.submit_and_wait(outstanding) {
                    Ok(_) => {}
                    Err(error)
                        if matches!(
                            error.raw_os_error(),
                            Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                        ) => {}
                    Err(error) => {
                        self.failed = true;
                        return Err(error);
                    }
                }
                for completion in self.ring.completion() {
                    results[completion.user_data() as usize] = written(completion.result());
                    outstanding -= 1;
                }
            }
        }
        Ok(())
    }
}

/// A slot outside every file table.
pub const NO_SLOT: usize = usize::MAX;

/// This process's limit on open descriptors.
fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur
}

/// The one buffer of a write that `send` can take whole, if it is one.
fn whole(slices: &[IoSlice<'_>]) -> Option<(*const u8, u32)> {
    match slices {
        [slice] => Some((slice.as_ptr(), u32::try_from(slice.len()).ok()?)),
        _ => None,
    }
}

/// A completion's result as `writev` would give it: a full socket wrote nothing.
fn written(result: i32) -> io::Result<usize> {
    match result {
        0.. => Ok(result as usize),
        _ if matches!(-result, libc::EAGAIN | libc::EINTR) => Ok(0),
        _ => Err(io::Error::from_raw_os_error(-result)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (writer, reader) = UnixStream::pair().unwrap();
        writer.set_nonblocking(true).unwrap();
        reader.set_nonblocking(true).unwrap();
        (writer, reader)
    }

    fn read_all(reader: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buffer = [0; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buffer) {
            got.extend_from_slice(&buffer[..n]);
        }
        got
    }

    #[test]
    fn more_writes_than_a_submission_takes_each_write_whole() {
        let mut ring = Ring::with_entries(4).unwrap();
        let pairs: Vec<_> = (0..11).map(|_| pair()).collect();
        let tails: Vec<String> = (0..pairs.len()).map(|i| format!("-{i}")).collect();
        let slices: Vec<[IoSlice<'_>; 2]> = tails
            .iter()
            .map(|tail| [IoSlice::new(b"frame"), IoSlice::new(tail.as_bytes())])
            .collect();
        let mut results = Vec::new();
        ring.write_each(
            pairs
                .iter()
                .zip(&slices)
                .map(|((writer, _), slices)| (NO_SLOT, writer.as_raw_fd(), &slices[..])),
            &mut results,
        )
        .unwrap();
        assert_eq!(results.len(), pairs.len());
        for (i, ((_, mut reader), result)) in pairs.into_iter().zip(results).enumerate() {
            let expected = format!("frame-{i}");
            assert_eq!(result.unwrap(), expected.len());
            assert_eq!(read_all(&mut reader), expected.as_bytes());
        }
    }

    #[test]
    fn a_full_socket_takes_nothing_and_a_closed_one_fails() {
        let mut ring = Ring::new().unwrap();
        let (full, _full_reader) = pair();
        let (closed, closed_reader) = pair();
        drop(closed_reader);
        let chunk = vec![7u8; 64 * 1024];
        let slices = [IoSlice::new(&chunk)];
        let mut results = Vec::new();
        // Fill the first socket: once full, a write takes nothing (instead of waiting).
        let mut filled = 0;
        loop {
            ring.write_each([(NO_SLOT, full.as_raw_fd(), &slices[..])], &mut results)
                .unwrap();
            match results[0].as_ref().unwrap() {
                0 => break,
                n => filled += n,
            }
        }
        assert!(filled > 0);
        ring.write_each(
            [
                (NO_SLOT, full.as_raw_fd(), &slices[..]),
                (NO_SLOT, closed.as_raw_fd(), &slices[..]),
            ],
            &mut results,
        )
        .unwrap();
        assert_eq!(*results[0].as_ref().unwrap(), 0);
        let error = results[1].as_ref().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe, "{error}");
    }

    #[test]
    fn a_registered_socket_is_written_by_slot_and_closes_once_unregistered() {
        let mut ring = Ring::new().unwrap();
        assert!(
            !ring.files.is_empty(),
            "this kernel has io_uring file tables"
        );
        let (writer, mut reader) = pair();
        let slot = 3;
        ring.register(slot, writer.as_raw_fd());
        assert_eq!(ring.files[slot], writer.as_raw_fd());
        let slices = [IoSlice::new(b"by slot")];
        let mut results = Vec::new();
        ring.write_each([(slot, writer.as_raw_fd(), &slices[..])], &mut results)
            .unwrap();
        assert_eq!(*results[0].as_ref().unwrap(), 7);
        assert_eq!(read_all(&mut reader), b"by slot");

        // The table holds a reference of its own: only once the socket is out of it does
        // closing the descriptor end the stream.
        ring.unregister(slot);
        assert_eq!(ring.files[slot], -1);
        drop(writer);
        reader.set_nonblocking(false).unwrap();
        reader
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(reader.read(&mut [0; 8]).unwrap(), 0, "end of stream");
    }
}
