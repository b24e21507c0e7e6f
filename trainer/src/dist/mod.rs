//! Data parallelism: who this process is ([`Comm`]), how the flat gradient is cut into messages and
//! optimizer shards ([`Layout`]), and the gradient reduction that overlaps backward ([`GradSync`]).
//!
//! One process per device. Every rank holds the whole model; gradients are averaged in fp32 in
//! fixed-size messages, each part of the model as soon as its gradients are final. With ZeRO-1 the
//! reduction is a reduce-scatter: rank i receives the summed gradient of its 1/W of every message,
//! updates those parameters with its 1/W of the optimizer state, and an all-gather puts the updated
//! parameters back on every rank.

#[cfg(feature = "mpi")]
mod mpi;

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use muninn_model::GradEvent;
use tch::{Device, Kind, Tensor};

use crate::config::Transport;

/// Element types the collectives carry.
#[derive(Debug, Clone, Copy)]
pub enum Dt {
    F32,
    F64,
}

/// Reduction operators.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Sum,
    Max,
    Min,
}

/// This process's place in the job.
pub enum Comm {
    /// No MPI: one process trains alone.
    Single,
    #[cfg(feature = "mpi")]
    Mpi(mpi::Mpi),
}

/// Variables through which MPI launchers announce a multi-process job (`hpc-and-ecosystem.md` §5.2).
const LAUNCHER_VARS: [&str; 6] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMI_RANK",
    "PMIX_RANK",
    "PALS_RANKID",
    "MV2_COMM_WORLD_SIZE",
];

impl Comm {
    /// MPI when an MPI launcher started this process (mpirun, srun, Cray PALS) or `MUNINN_MPI=1`;
    /// one process otherwise (`MUNINN_MPI=0` forces that). Rank and size come from MPI itself, the
    /// local rank from a shared-memory split; the variables only decide whether to initialise.
    pub fn from_env() -> Result<Comm> {
        let forced = std::env::var("MUNINN_MPI").ok();
        let launched = LAUNCHER_VARS.iter().find(|v| std::env::var_os(v).is_some());
        let want = match forced.as_deref() {
            Some("1") => true,
            Some("0") => false,
            Some(other) => bail!("MUNINN_MPI = `{other}`: expected 0 or 1"),
            None => launched.is_some(),
        };
        if !want {
            return Ok(Comm::Single);
        }
        #[cfg(feature = "mpi")]
        {
            Ok(Comm::Mpi(mpi::Mpi::init()?))
        }
        #[cfg(not(feature = "mpi"))]
        bail!(
            "started by an MPI launcher ({}), but this muninn was built without the `mpi` feature; \
             rebuild with default features, or set MUNINN_MPI=0 to train one process per launch",
            launched.copied().unwrap_or("MUNINN_MPI=1")
        )
    }

    pub fn rank(&self) -> usize {
        match self {
            Comm::Single => 0,
            #[cfg(feature = "mpi")]
            Comm::Mpi(m) => m.rank(),
        }
    }

    pub fn world(&self) -> usize {
        match self {
            Comm::Single => 1,
            #[cfg(feature = "mpi")]
            Comm::Mpi(m) => m.size(),
        }
    }

    pub fn local_rank(&self) -> usize {
        match self {
            Comm::Single => 0,
            #[cfg(feature = "mpi")]
            Comm::Mpi(m) => m.local_rank(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = self {
            m.set_timeout(timeout);
        }
        let _ = timeout;
    }

    /// Ends the whole job after an error on this rank, so the others do not wait for a timeout.
    pub fn abort(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = self {
            if m.size() > 1 {
                m.abort(code);
            }
        }
        let _ = code;
    }

    /// Combines `vals` element-wise over ranks, in place.
    pub fn allreduce_f64(&self, vals: &mut [f64], op: Op, what: &str) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = self {
            if m.size() > 1 {
                let send = vals.to_vec();
                // SAFETY: both buffers hold vals.len() f64 and outlive the wait below.
                let p = unsafe {
                    m.iallreduce(
                        send.as_ptr().cast(),
                        vals.as_mut_ptr().cast(),
                        vals.len(),
                        Dt::F64,
                        op,
                        what.to_string(),
                    )?
                };
                m.wait(p);
            }
        }
        let _ = (vals, op, what);
        Ok(())
    }

    /// Sums `vals` over ranks.
    pub fn sum_f64(&self, vals: &mut [f64], what: &str) -> Result<()> {
        self.allreduce_f64(vals, Op::Sum, what)
    }

    /// Copies rank 0's `t` (fp32, contiguous, any device) to every rank, through host memory, in
    /// messages of at most `chunk` elements.
    pub fn broadcast(&self, t: &Tensor, chunk: i64, what: &str) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = self {
            if m.size() > 1 {
                ensure!(t.kind() == Kind::Float, "{what}: broadcast takes fp32");
                let host = t.detach().to_device(Device::Cpu).contiguous();
                let n = host.numel() as i64;
                let mut off = 0;
                while off < n {
                    let len = chunk.min(n - off);
                    let part = host.narrow(0, off, len);
                    // SAFETY: `part` is contiguous host memory of `len` f32, alive until the wait.
                    let p = unsafe {
                        m.ibcast(
                            part.data_ptr(),
                            len as usize,
                            Dt::F32,
                            0,
                            format!("{what} (elements {off}..{})", off + len),
                        )?
                    };
                    m.wait(p);
                    off += len;
                }
                tch::no_grad(|| t.detach().copy_(&host));
            }
        }
        let _ = (t, chunk, what);
        Ok(())
    }

    /// The start-up check: an all-reduce of a known tensor of one message's size. Fails fast, naming
    /// what went wrong, before any real work depends on the collectives.
    pub fn check(&self, chunk: i64) -> Result<()> {
        let w = self.world() as f64;
        if w <= 1.0 {
            return Ok(());
        }
        let send = Tensor::full(
            [chunk],
            (self.rank() + 1) as f64,
            (Kind::Float, Device::Cpu),
        );
        let recv = send.zeros_like();
        self.allreduce_tensor(&send, &recv, "the start-up all-reduce")?;
        let want = w * (w + 1.0) / 2.0;
        let (lo, hi) = (recv.min().double_value(&[]), recv.max().double_value(&[]));
        ensure!(
            lo == want && hi == want,
            "the start-up all-reduce of {chunk} fp32 over {w} ranks gave values in [{lo}, {hi}], expected \
             {want} everywhere: the MPI library is broken or misconfigured (mixed MPI installs? a \
             GPU-aware setting without GPU buffers?)"
        );
        Ok(())
    }

    /// Blocking all-reduce (sum) of one host fp32 tensor into another of the same size.
    fn allreduce_tensor(&self, send: &Tensor, recv: &Tensor, what: &str) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = self {
            // SAFETY: contiguous host tensors of equal size, alive until the wait.
            let p = unsafe {
                m.iallreduce(
                    send.data_ptr(),
                    recv.data_ptr(),
                    send.numel(),
                    Dt::F32,
                    Op::Sum,
                    what.to_string(),
                )?
            };
            m.wait(p);
            return Ok(());
        }
        let _ = what;
        tch::no_grad(|| recv.detach().copy_(send));
        Ok(())
    }
}

/// One message of the gradient stream: `len` elements at `offset` of the flat buffer, split into
/// one piece per rank (`counts`, `displs` relative to `offset`) for reduce-scatter and all-gather.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub offset: i64,
    pub len: i64,
    pub counts: Vec<i32>,
    pub displs: Vec<i32>,
    /// Where this rank's piece of the chunk sits in its optimizer shard.
    pub shard_offset: i64,
}

/// How the flat parameter buffer is cut into messages and optimizer shards. It depends only on the
/// model shape, the message size and the world size, so every rank computes the same one.
#[derive(Debug, Clone)]
pub struct Layout {
    pub chunks: Vec<Chunk>,
    /// Chunks of each gradient region, in the order backward completes them.
    pub regions: Vec<Range<usize>>,
    pub rank: usize,
    pub world: usize,
    pub numel: i64,
    /// Elements this rank owns under ZeRO-1.
    pub shard_len: i64,
}

impl Layout {
    /// `regions`: ranges of the flat buffer in the order backward completes them (a family's
    /// `grad_regions`), together covering it once. Every message is split evenly over the ranks.
    pub fn new(regions: &[Range<i64>], chunk: i64, rank: usize, world: usize) -> Self {
        Self::build(regions, chunk, rank, world, &[])
    }

    /// As [`Layout::new`], but each tensor of `whole` (flat ranges, e.g. Muon's matrices) lies in
    /// one rank's shard, whole: the largest first, each to the rank that owns the fewest such
    /// elements so far (ties to the lowest rank). Everything else is split evenly.
    pub fn owning(
        regions: &[Range<i64>],
        whole: &[Range<i64>],
        chunk: i64,
        rank: usize,
        world: usize,
    ) -> Self {
        let mut order: Vec<&Range<i64>> = whole.iter().collect();
        order.sort_by_key(|r| (std::cmp::Reverse(r.end - r.start), r.start));
        let mut load = vec![0i64; world];
        let mut owned: Vec<(Range<i64>, usize)> = order
            .into_iter()
            .map(|r| {
                let owner = (0..world).min_by_key(|&i| (load[i], i)).unwrap_or(0);
                load[owner] += r.end - r.start;
                (r.clone(), owner)
            })
            .collect();
        owned.sort_by_key(|(r, _)| r.start);
        Self::build(regions, chunk, rank, world, &owned)
    }

    /// Messages of at most `chunk` elements that never straddle a region or an owned tensor; a
    /// message inside an owned tensor goes to its owner whole, any other splits evenly.
    fn build(
        regions: &[Range<i64>],
        chunk: i64,
        rank: usize,
        world: usize,
        owned: &[(Range<i64>, usize)],
    ) -> Self {
        let (mut chunks, mut shard_len) = (Vec::new(), 0);
        let mut chunk_ranges: Vec<Range<usize>> = Vec::new();
        let w = world as i64;
        for region in regions {
            let first = chunks.len();
            let mut off = region.start;
            while off < region.end {
                let inside = owned.iter().find(|(r, _)| r.start <= off && off < r.end);
                let next_owned = owned
                    .iter()
                    .map(|(r, _)| r.start)
                    .filter(|&s| s > off)
                    .min()
                    .unwrap_or(i64::MAX);
                let stop = match inside {
                    Some((r, _)) => r.end,
                    None => next_owned,
                };
                let len = chunk.min(region.end - off).min(stop - off);
                let counts: Vec<i32> = match inside {
                    Some(&(_, owner)) => (0..world)
                        .map(|i| if i == owner { len as i32 } else { 0 })
                        .collect(),
                    None => (0..w)
                        .map(|i| (len / w + i64::from(i < len % w)) as i32)
                        .collect(),
                };
                let displs = counts
                    .iter()
                    .scan(0i32, |acc, &c| {
                        let d = *acc;
                        *acc += c;
                        Some(d)
                    })
                    .collect();
                chunks.push(Chunk {
                    offset: off,
                    len,
                    shard_offset: shard_len,
                    counts: counts.clone(),
                    displs,
                });
                shard_len += i64::from(counts[rank]);
                off += len;
            }
            chunk_ranges.push(first..chunks.len());
        }
        let numel = regions.iter().map(|r| r.end - r.start).sum();
        Layout {
            chunks,
            regions: chunk_ranges,
            rank,
            world,
            numel,
            shard_len,
        }
    }

    /// This rank's pieces of the flat buffer, in shard order: (flat offset, length).
    pub fn pieces(&self) -> Vec<(i64, i64)> {
        self.chunks
            .iter()
            .map(|c| {
                (
                    c.offset + i64::from(c.displs[self.rank]),
                    i64::from(c.counts[self.rank]),
                )
            })
            .filter(|&(_, len)| len > 0)
            .collect()
    }
}

/// Time spent communicating gradients, for the logs and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommStats {
    /// Issuing messages (including device→host copies when staging).
    pub launch_s: f64,
    /// Blocked on messages after backward finished: the part not hidden behind backward (it includes
    /// waiting for a slower rank to finish its own backward).
    pub wait_s: f64,
    /// Gradient elements sent, and those whose message had already completed when backward ended.
    pub elems: f64,
    pub elems_done_in_backward: f64,
}

/// The gradient stream of one step: messages launched as backward completes each region, finished
/// after it.
pub struct GradSync {
    layout: Layout,
    zero1: bool,
    overlap: bool,
    /// Device tensors are copied to host memory for MPI (any MPI); else MPI gets device pointers.
    staged: bool,
    /// Host copy of the gradient (staged only).
    host_grad: Option<Tensor>,
    /// Where results land: the whole flat buffer (all-reduce) or this rank's shard (reduce-scatter).
    recv: Tensor,
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pending: VecDeque<PendingChunk>,
    /// Which regions' messages are out.
    launched: Vec<bool>,
    pub stats: CommStats,
}

struct PendingChunk {
    #[cfg(feature = "mpi")]
    op: mpi::Pending,
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    elems: f64,
}

impl GradSync {
    pub fn new(
        layout: Layout,
        zero1: bool,
        overlap: bool,
        transport: Transport,
        device: Device,
    ) -> Self {
        let staged = device != Device::Cpu && transport == Transport::Host;
        let home = if staged { Device::Cpu } else { device };
        let recv_len = if zero1 {
            layout.shard_len
        } else {
            layout.numel
        };
        let launched = vec![false; layout.regions.len()];
        GradSync {
            host_grad: staged.then(|| Tensor::zeros([layout.numel], (Kind::Float, Device::Cpu))),
            recv: Tensor::zeros([recv_len], (Kind::Float, home)),
            layout,
            zero1,
            overlap,
            staged,
            pending: VecDeque::new(),
            launched,
            stats: CommStats::default(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Called from the backward pass at each [`GradEvent`]: launches the region that just became
    /// final (every region once the last one is, and only then when overlap is off) and drives
    /// MPI's progress in between.
    pub fn on_event(&mut self, comm: &Comm, grad: &Tensor, event: GradEvent) -> Result<()> {
        let last = self.launched.len() - 1;
        match event {
            GradEvent::Final(region) if region >= last => {
                (0..=last).try_for_each(|r| self.launch(comm, grad, r))
            }
            GradEvent::Final(region) if self.overlap => self.launch(comm, grad, region),
            GradEvent::Final(_) => Ok(()),
            GradEvent::Progress => {
                self.progress(comm);
                Ok(())
            }
        }
    }

    fn launch(&mut self, comm: &Comm, grad: &Tensor, region: usize) -> Result<()> {
        if std::mem::replace(&mut self.launched[region], true) {
            return Ok(());
        }
        let t0 = Instant::now();
        let range = self.layout.regions[region].clone();
        // The source of every message: the gradient itself, or its host copy.
        let src = match &self.host_grad {
            Some(h) => {
                for c in &self.layout.chunks[range.clone()] {
                    tch::no_grad(|| {
                        h.narrow(0, c.offset, c.len)
                            .copy_(&grad.narrow(0, c.offset, c.len))
                    });
                }
                h.shallow_clone()
            }
            None => {
                if let Device::Cuda(i) = grad.device() {
                    // MPI is not stream-aware: the kernels that wrote the gradient must be done.
                    tch::Cuda::synchronize(i as i64);
                }
                grad.shallow_clone()
            }
        };
        for i in range {
            self.launch_chunk(comm, &src, i)?;
        }
        self.stats.launch_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    #[allow(unused_variables)]
    fn launch_chunk(&mut self, comm: &Comm, src: &Tensor, i: usize) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = comm {
            let c = &self.layout.chunks[i];
            let send = src.narrow(0, c.offset, c.len);
            let what = format!(
                "gradient {} {}/{}",
                if self.zero1 {
                    "reduce-scatter"
                } else {
                    "all-reduce"
                },
                i + 1,
                self.layout.chunks.len()
            );
            // SAFETY: `send` views the gradient (or its host copy) and `recv` this sync's own buffer;
            // both stay alive and untouched until `finish` has waited for every message.
            let op = unsafe {
                if self.zero1 {
                    let mine = i64::from(c.counts[self.layout.rank]);
                    let recv = self.recv.narrow(0, c.shard_offset, mine);
                    m.ireduce_scatter(send.data_ptr(), recv.data_ptr(), c.counts.clone(), what)?
                } else {
                    let recv = self.recv.narrow(0, c.offset, c.len);
                    m.iallreduce(
                        send.data_ptr(),
                        recv.data_ptr(),
                        c.len as usize,
                        Dt::F32,
                        Op::Sum,
                        what,
                    )?
                }
            };
            self.pending.push_back(PendingChunk {
                op,
                elems: c.len as f64,
            });
        }
        Ok(())
    }

    /// Lets MPI move messages along (non-blocking collectives progress only inside MPI calls).
    #[allow(unused_variables)]
    pub fn progress(&mut self, comm: &Comm) {
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = comm {
            for p in self.pending.iter_mut() {
                m.test(&mut p.op);
            }
        }
    }

    /// Waits for every message and returns the averaged gradient times `scale`: the whole flat
    /// gradient (written back into `grad`), or with ZeRO-1 this rank's shard of it.
    pub fn finish(&mut self, comm: &Comm, grad: &Tensor, scale: f64) -> Result<Tensor> {
        (0..self.launched.len()).try_for_each(|r| self.launch(comm, grad, r))?;
        let t0 = Instant::now();
        #[cfg(feature = "mpi")]
        if let Comm::Mpi(m) = comm {
            while let Some(mut p) = self.pending.pop_front() {
                self.stats.elems += p.elems;
                if m.test(&mut p.op) {
                    self.stats.elems_done_in_backward += p.elems;
                } else {
                    m.wait(p.op);
                }
            }
        }
        self.stats.wait_s += t0.elapsed().as_secs_f64();
        self.launched.iter_mut().for_each(|l| *l = false);
        let scale = scale / self.layout.world as f64;
        tch::no_grad(|| {
            if self.zero1 {
                Ok((&self.recv * scale).to_device(grad.device()))
            } else {
                grad.detach().copy_(&self.recv);
                let _ = grad.detach().g_mul_scalar_(scale);
                Ok(grad.shallow_clone())
            }
        })
    }

    /// ZeRO-1: puts every rank's updated shard `shard` back into the flat parameters `flat`.
    pub fn all_gather(&mut self, comm: &Comm, shard: &Tensor, flat: &Tensor) -> Result<()> {
        let t0 = Instant::now();
        let (src, dst) = match self.staged {
            true => (
                shard.to_device(Device::Cpu),
                self.host_grad.as_ref().expect("staged").shallow_clone(),
            ),
            false => {
                if let Device::Cuda(i) = flat.device() {
                    tch::Cuda::synchronize(i as i64);
                }
                (shard.shallow_clone(), flat.detach())
            }
        };
        gather_chunks(comm, &self.layout, &src, &dst, "parameter all-gather")?;
        if self.staged {
            tch::no_grad(|| flat.detach().copy_(&dst));
        }
        self.stats.wait_s += t0.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Every rank's shard `src` (shard order) into `dst` (flat order), message by message.
#[allow(unused_variables)]
fn gather_chunks(
    comm: &Comm,
    layout: &Layout,
    src: &Tensor,
    dst: &Tensor,
    what: &str,
) -> Result<()> {
    #[cfg(feature = "mpi")]
    if let Comm::Mpi(m) = comm {
        let mut ops = Vec::with_capacity(layout.chunks.len());
        for (i, c) in layout.chunks.iter().enumerate() {
            let mine = i64::from(c.counts[layout.rank]);
            let send = src.narrow(0, c.shard_offset, mine);
            let recv = dst.narrow(0, c.offset, c.len);
            // SAFETY: `src` and `dst` are contiguous, distinct and alive until the waits below.
            ops.push(unsafe {
                m.iallgatherv(
                    send.data_ptr(),
                    recv.data_ptr(),
                    c.counts.clone(),
                    c.displs.clone(),
                    format!("{what} {}/{}", i + 1, layout.chunks.len()),
                )?
            });
        }
        for op in ops {
            m.wait(op);
        }
        return Ok(());
    }
    tch::no_grad(|| dst.detach().copy_(src));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_the_buffer_once_and_shards_partition_it() {
        let regions = [70..100, 10..70, 0..10];
        let world = 3;
        let layouts: Vec<Layout> = (0..world)
            .map(|r| Layout::new(&regions, 16, r, world))
            .collect();
        let l = &layouts[0];
        // Regions are cut into messages of at most 16, in backward order.
        assert_eq!(
            l.chunks
                .iter()
                .map(|c| (c.offset, c.len))
                .collect::<Vec<_>>(),
            vec![
                (70, 16),
                (86, 14),
                (10, 16),
                (26, 16),
                (42, 16),
                (58, 12),
                (0, 10)
            ]
        );
        assert_eq!(l.regions, vec![0..2, 2..6, 6..7]);
        // Every element is owned by exactly one rank.
        let mut owner = vec![0; 100];
        for l in &layouts {
            for (off, len) in l.pieces() {
                (off..off + len).for_each(|i| owner[i as usize] += 1);
            }
            assert_eq!(l.shard_len, l.pieces().iter().map(|p| p.1).sum::<i64>());
        }
        assert!(owner.iter().all(|&n| n == 1), "{owner:?}");
        // Shards differ in size by at most one element per message.
        let lens: Vec<i64> = layouts.iter().map(|l| l.shard_len).collect();
        assert!(
            lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 7,
            "{lens:?}"
        );
        let full = Tensor::arange(100, (Kind::Float, Device::Cpu));
        let shard = crate::optim::gather_pieces(&full, &layouts[1].pieces());
        assert_eq!(shard.numel() as i64, layouts[1].shard_len);
    }

    #[test]
    fn owned_tensors_land_whole_on_one_rank_balanced_by_size() {
        // Backward order as above; four "matrices" of 30, 24, 20 and 6 elements among the rest.
        let regions = [70..100, 10..70, 0..10];
        let whole = [70..100, 10..34, 40..60, 2..8];
        let world = 2;
        let layouts: Vec<Layout> = (0..world)
            .map(|r| Layout::owning(&regions, &whole, 16, r, world))
            .collect();
        let owns = |l: &Layout, r: &Range<i64>| {
            let mine: i64 = l
                .pieces()
                .iter()
                .map(|&(o, n)| (o + n).min(r.end) - o.max(r.start))
                .filter(|&n| n > 0)
                .sum();
            mine
        };
        // Largest first to the emptier rank: 30 → 0, 24 → 1, 20 → 1, 6 → 0.
        let expect = [0, 1, 1, 0];
        for (r, &owner) in whole.iter().zip(&expect) {
            assert_eq!(owns(&layouts[owner], r), r.end - r.start, "{r:?}");
            assert_eq!(owns(&layouts[1 - owner], r), 0, "{r:?}");
        }
        // No message straddles an owned tensor's edge, and all elements are owned once.
        for c in &layouts[0].chunks {
            for r in &whole {
                let (lo, hi) = (c.offset, c.offset + c.len);
                assert!(hi <= r.start || lo >= r.end || (lo >= r.start && hi <= r.end));
            }
        }
        let mut owner = vec![0; 100];
        for l in &layouts {
            for (off, len) in l.pieces() {
                (off..off + len).for_each(|i| owner[i as usize] += 1);
            }
            assert_eq!(l.shard_len, l.pieces().iter().map(|p| p.1).sum::<i64>());
        }
        assert!(owner.iter().all(|&n| n == 1), "{owner:?}");
    }
}
