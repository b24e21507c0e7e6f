//! MPI underneath [`super::Comm`]: non-blocking collectives on raw pointers, each awaited with a
//! deadline, so that a dead or stopped rank ends the job instead of hanging it.
//!
//! rsmpi sets up MPI and the communicators; the collectives themselves go through `mpi::ffi`, because
//! their buffers are tensor memory (host or, with a GPU-aware MPI, device) that Rust slices cannot
//! describe, and rsmpi has no non-blocking reduce-scatter or all-gather with counts.

use std::ffi::c_void;
use std::os::raw::c_int;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::{Dt, Op};

const ROLL_CALL_TAG: c_int = 4242;

fn dt(d: Dt) -> ffi::MPI_Datatype {
    // SAFETY: link-time constants of the MPI library, initialised before main.
    unsafe {
        match d {
            Dt::F32 => ffi::RSMPI_FLOAT,
            Dt::F64 => ffi::RSMPI_DOUBLE,
        }
    }
}

fn op(o: Op) -> ffi::MPI_Op {
    // SAFETY: as in `dt`.
    unsafe {
        match o {
            Op::Sum => ffi::RSMPI_SUM,
            Op::Max => ffi::RSMPI_MAX,
            Op::Min => ffi::RSMPI_MIN,
        }
    }
}

/// A non-blocking collective in flight. The count arrays live here because MPI reads them until the
/// operation completes; the data buffers are the caller's to keep alive.
pub struct Pending {
    req: ffi::MPI_Request,
    what: String,
    _counts: Vec<c_int>,
    _displs: Vec<c_int>,
}

pub struct Mpi {
    world: SimpleCommunicator,
    /// A duplicate of `world` for the roll call after a timeout, so it cannot match the stuck traffic.
    roll_call: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    timeout: Duration,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (funneled: only the main thread calls it). Must run before libtorch touches a
    /// GPU, as GPU-aware MPI libraries hook device memory at init.
    pub fn init() -> Result<Self> {
        let Some((universe, _level)) = mpi::initialize_with_threading(Threading::Funneled) else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        let shared = world.split_shared(world.rank());
        Ok(Mpi {
            roll_call: world.duplicate(),
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: shared.rank() as usize,
            world,
            timeout: Duration::from_secs(600),
            _universe: universe,
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Ends every rank of the job (MPI_Abort). Used after an error on one rank, which the others
    /// could otherwise only notice through a timeout.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn started(&self, req: ffi::MPI_Request, rc: c_int, what: String) -> Result<Pending> {
        check(rc, &what)?;
        Ok(Pending {
            req,
            what,
            _counts: Vec::new(),
            _displs: Vec::new(),
        })
    }

    /// # Safety
    /// `send` and `recv` must hold `n` elements of `d` and stay valid (and `recv` unread) until the
    /// operation is waited for; they must not overlap.
    pub unsafe fn iallreduce(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        n: usize,
        d: Dt,
        o: Op,
        what: String,
    ) -> Result<Pending> {
        let mut req = ffi::RSMPI_REQUEST_NULL;
        let rc = ffi::MPI_Iallreduce(
            send,
            recv,
            count(n)?,
            dt(d),
            op(o),
            self.world.as_raw(),
            &mut req,
        );
        self.started(req, rc, what)
    }

    /// Sums `send` (Σ counts f32 elements) over ranks and leaves rank i the i-th block of
    /// `counts[i]` elements in `recv`.
    ///
    /// # Safety
    /// As [`Mpi::iallreduce`], with `recv` holding `counts[rank]` elements.
    pub unsafe fn ireduce_scatter(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        counts: Vec<c_int>,
        what: String,
    ) -> Result<Pending> {
        let mut req = ffi::RSMPI_REQUEST_NULL;
        let rc = ffi::MPI_Ireduce_scatter(
            send,
            recv,
            counts.as_ptr(),
            dt(Dt::F32),
            op(Op::Sum),
            self.world.as_raw(),
            &mut req,
        );
        let mut p = self.started(req, rc, what)?;
        p._counts = counts;
        Ok(p)
    }

    /// Every rank's `counts[rank]` f32 elements of `send` land in `recv` at `displs[i]`.
    ///
    /// # Safety
    /// As [`Mpi::iallreduce`], with `recv` holding max(displs + counts) elements.
    pub unsafe fn iallgatherv(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        counts: Vec<c_int>,
        displs: Vec<c_int>,
        what: String,
    ) -> Result<Pending> {
        let mut req = ffi::RSMPI_REQUEST_NULL;
        let rc = ffi::MPI_Iallgatherv(
            send,
            counts[self.rank],
            dt(Dt::F32),
            recv,
            counts.as_ptr(),
            displs.as_ptr(),
            dt(Dt::F32),
            self.world.as_raw(),
            &mut req,
        );
        let mut p = self.started(req, rc, what)?;
        p._counts = counts;
        p._displs = displs;
        Ok(p)
    }

    /// # Safety
    /// `buf` must hold `n` elements of `d` and stay valid until waited for.
    pub unsafe fn ibcast(
        &self,
        buf: *mut c_void,
        n: usize,
        d: Dt,
        root: usize,
        what: String,
    ) -> Result<Pending> {
        let mut req = ffi::RSMPI_REQUEST_NULL;
        let rc = ffi::MPI_Ibcast(
            buf,
            count(n)?,
            dt(d),
            root as c_int,
            self.world.as_raw(),
            &mut req,
        );
        self.started(req, rc, what)
    }

    /// Whether `p` has completed; drives MPI's progress engine. A failed request ends the job at
    /// once, naming the operation: it would never complete, and waiting would only reach the timeout.
    pub fn test(&self, p: &mut Pending) -> bool {
        let mut flag: c_int = 0;
        // SAFETY: `p.req` is a live request (or null once completed, which MPI_Test accepts).
        let rc = unsafe { ffi::MPI_Test(&mut p.req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
        if let Err(e) = check(rc, &p.what) {
            eprintln!("rank {}: {e:#}; ending the job", self.rank);
            self.abort(1);
        }
        flag != 0
    }

    /// Waits for `p`, polling, until the deadline; then finds out which ranks stopped answering and
    /// ends the job.
    pub fn wait(&self, mut p: Pending) {
        let start = Instant::now();
        let mut spins = 0u32;
        while !self.test(&mut p) {
            if start.elapsed() > self.timeout {
                self.give_up(&p.what);
            }
            // Spin briefly for latency, then sleep: ranks may share cores (--oversubscribe).
            spins += 1;
            if spins > 64 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// After a timeout: every rank that is still alive reports to rank 0 on a separate communicator;
    /// rank 0 names the ranks that did not, then aborts the job. If rank 0 is the one that stopped,
    /// the others abort after the grace period and say so.
    fn give_up(&self, what: &str) -> ! {
        let grace = (self.timeout / 2).clamp(Duration::from_secs(2), Duration::from_secs(60));
        eprintln!(
            "rank {}: {what} did not complete within {:.0} s; checking which ranks still answer",
            self.rank,
            self.timeout.as_secs_f64()
        );
        let comm = self.roll_call.as_raw();
        let me = self.rank as c_int;
        // SAFETY: the buffers below live until the process aborts at the end of this function.
        unsafe {
            if self.rank == 0 {
                let mut answers = vec![-1 as c_int; self.size];
                let mut reqs = vec![ffi::RSMPI_REQUEST_NULL; self.size];
                for (r, req) in reqs.iter_mut().enumerate().skip(1) {
                    ffi::MPI_Irecv(
                        answers.as_mut_ptr().add(r).cast(),
                        1,
                        ffi::RSMPI_INT32_T,
                        r as c_int,
                        ROLL_CALL_TAG,
                        comm,
                        req,
                    );
                }
                let start = Instant::now();
                let mut done = vec![false; self.size];
                done[0] = true;
                while start.elapsed() < grace && done.iter().any(|d| !d) {
                    for r in 1..self.size {
                        if !done[r] {
                            let mut flag = 0;
                            ffi::MPI_Test(&mut reqs[r], &mut flag, ffi::RSMPI_STATUS_IGNORE);
                            done[r] = flag != 0;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let silent: Vec<usize> = (0..self.size).filter(|&r| !done[r]).collect();
                if silent.is_empty() {
                    eprintln!(
                        "rank 0: every rank answered, yet {what} did not complete: the MPI transport \
                         itself is stuck (check the network and the MPI's settings)"
                    );
                } else {
                    eprintln!(
                        "rank 0: rank(s) {silent:?} stopped answering (dead, stopped or hung) during \
                         {what}; ending the job. The last complete checkpoint is intact."
                    );
                }
            } else {
                let mut req = ffi::RSMPI_REQUEST_NULL;
                ffi::MPI_Isend(
                    (&me as *const c_int).cast(),
                    1,
                    ffi::RSMPI_INT32_T,
                    0,
                    ROLL_CALL_TAG,
                    comm,
                    &mut req,
                );
                // Rank 0 aborts the job once it has heard everyone; if that does not happen, rank 0
                // is itself the one that stopped.
                let start = Instant::now();
                while start.elapsed() < grace * 2 {
                    let mut flag = 0;
                    ffi::MPI_Test(&mut req, &mut flag, ffi::RSMPI_STATUS_IGNORE);
                    std::thread::sleep(Duration::from_millis(10));
                }
                eprintln!(
                    "rank {}: rank 0 did not answer (dead, stopped or hung) during {what}; ending \
                     the job. The last complete checkpoint is intact.",
                    self.rank
                );
            }
        }
        self.world.abort(3)
    }
}

fn count(n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| anyhow::anyhow!("{n} elements exceed one MPI message"))
}

/// An MPI return code as a result: MPI_SUCCESS (0), or an error naming `what` and MPI's own text.
fn check(rc: c_int, what: &str) -> Result<()> {
    check_with(rc, what, error_text)
}

fn check_with(rc: c_int, what: &str, text: impl Fn(c_int) -> String) -> Result<()> {
    match rc {
        0 => Ok(()),
        _ => bail!("{what}: MPI error {rc}: {}", text(rc)),
    }
}

/// MPI's description of an error code (needs an initialised MPI).
fn error_text(rc: c_int) -> String {
    let mut buf = vec![0 as std::os::raw::c_char; 1024];
    let mut len: c_int = 0;
    // SAFETY: MPI writes at most MPI_MAX_ERROR_STRING (256 in OpenMPI and MPICH) characters.
    unsafe {
        match ffi::MPI_Error_string(rc, buf.as_mut_ptr(), &mut len) {
            0 => std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned(),
            _ => String::from("(no description)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mpi_error_code_is_an_error_naming_the_operation() {
        let text = |rc: c_int| format!("text of {rc}");
        assert!(check_with(0, "x", text).is_ok());
        let err = format!("{:#}", check_with(5, "summing the loss", text).unwrap_err());
        assert_eq!(err, "summing the loss: MPI error 5: text of 5");
    }
}
