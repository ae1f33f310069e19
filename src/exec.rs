//! The executor: runs ops on the CPU reference backend or records them for the GPU.
//! Model code is written once against `Exec` and runs on either backend.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{BufferPool, GpuContext, PoolStats, RecordStats, Recorder};
use crate::ops::{GpuArg, Op, PairOp};
use crate::tensor::{numel, numel_u64, Data, Tensor};

pub enum Backend {
    /// The plain-Rust reference: the test oracle and a slow fallback.
    Cpu,
    Gpu(Arc<GpuContext>),
}

/// Runs ops. On the GPU, ops are recorded and submitted together by `submit` or `read`.
///
/// Each GPU executor takes its outputs from its own buffer pool, so a buffer it frees
/// before submitting can only be reused by its own later (ordered) work, never by another
/// executor's recording that might be submitted first; inputs it does not own are held
/// until it submits. Several executors may therefore record on one `GpuContext` at once.
pub struct Exec {
    backend: Backend,
    rec: Recorder,
    /// Output buffers of this executor (GPU only).
    pool: Option<BufferPool>,
    /// Ops run so far, on either backend (see [`Exec::ops_run`]).
    ops: usize,
    /// Queue submits and the dispatches they carried (GPU only; see [`Exec::submits`]).
    submits: usize,
    dispatches_submitted: usize,
}

impl Exec {
    pub fn cpu() -> Self {
        Self {
            backend: Backend::Cpu,
            rec: Recorder::new(),
            pool: None,
            ops: 0,
            submits: 0,
            dispatches_submitted: 0,
        }
    }

    pub fn gpu(ctx: Arc<GpuContext>) -> Self {
        Self {
            pool: Some(BufferPool::new(ctx.device.clone())),
            backend: Backend::Gpu(ctx),
            rec: Recorder::new(),
            ops: 0,
            submits: 0,
            dispatches_submitted: 0,
        }
    }

    /// Buffer statistics of this executor's outputs (GPU only).
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.pool.as_ref().map(|p| p.stats())
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Cpu => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }

    pub fn gpu_context(&self) -> Option<&Arc<GpuContext>> {
        match &self.backend {
            Backend::Gpu(c) => Some(c),
            Backend::Cpu => None,
        }
    }

    /// How many ops [`Exec::run`] / [`Exec::run_pair`] have run on this executor, on either
    /// backend: each is one GPU command (a dispatch, or a copy for `SliceBatch`/`Concat`-like
    /// ops), so tests can count the commands of a step without a GPU.
    pub fn ops_run(&self) -> usize {
        self.ops
    }

    /// Queue submits this executor has made (GPU only; a submit with nothing recorded is
    /// not one). Benchmarks and the per-step regression guard count them.
    pub fn submits(&self) -> usize {
        self.submits
    }

    /// Compute dispatches recorded so far, submitted or not (copies are not dispatches).
    pub fn dispatches(&self) -> usize {
        self.dispatches_submitted + self.rec.dispatch_count()
    }

    /// GPU objects this executor's recordings have created: bind groups (cache misses) and
    /// uniform/data buffers. A warm step creates none (`tests/perf_guard.rs`).
    pub fn record_stats(&self) -> RecordStats {
        self.rec.stats()
    }

    /// Dispatches recorded and not yet submitted.
    pub fn pending_dispatches(&self) -> usize {
        self.rec.dispatch_count()
    }

    /// Put host data on this executor's backend.
    pub fn tensor(&mut self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let t = Tensor::from_vec(shape, data.to_vec())?;
        self.upload(&t)
    }

    /// Put small host data (a step's timesteps, labels) on this executor's backend as part
    /// of the current recording: the bytes travel in the recording's data block and are
    /// copied into a buffer from this executor's pool, so a warm step allocates nothing.
    /// The tensor holds the data for work recorded after this call, and for other executors
    /// once this one has submitted. Larger data goes through [`Exec::tensor`].
    pub fn tensor_staged(&mut self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        /// Above this, a buffer of its own is cheaper than re-sending the bytes every step.
        const MAX_STAGED: usize = 64 << 10;
        let Backend::Gpu(ctx) = &self.backend else {
            return self.tensor(shape, data);
        };
        let bytes = data.len() * 4;
        if bytes == 0 || bytes > MAX_STAGED {
            return self.tensor(shape, data);
        }
        // Validates that the shape matches the data.
        let t = Tensor::from_vec(shape, data.to_vec())?;
        let pool = self
            .pool
            .get_or_insert_with(|| BufferPool::new(ctx.device.clone()));
        let out = Arc::new(pool.get("staged upload", bytes as u64));
        self.rec.stage(bytemuck::cast_slice(data), out.buffer(), 0);
        Ok(Tensor::from_gpu(t.shape().to_vec(), out))
    }

    /// Move a tensor to this executor's backend (a no-op if it is already there).
    pub fn upload(&mut self, t: &Tensor) -> Result<Tensor> {
        match (&self.backend, &t.data) {
            (Backend::Gpu(ctx), Data::Cpu(v)) => {
                let buf = ctx.upload("tensor upload", v)?;
                Ok(Tensor::from_gpu(t.shape().to_vec(), buf))
            }
            (Backend::Cpu, Data::Gpu(_)) => Err(Error::invalid(
                "upload",
                "a GPU tensor cannot be moved to the CPU executor synchronously; use `Exec::read`",
            )),
            _ => Ok(t.clone()),
        }
    }

    /// A weight of logical shape `shape` given as packed f16 words (see
    /// [`pack_f16`](crate::weights::pack_f16)), stored as the packed-weight ops read it: the
    /// words on the GPU, the values widened to f32 on the CPU.
    pub fn upload_words(&self, label: &str, shape: &[usize], words: &[u32]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if words.len() != n.div_ceil(2) {
            return Err(Error::invalid(
                "upload",
                format!(
                    "`{label}`: {} packed words cannot hold {n} f16 values",
                    words.len()
                ),
            ));
        }
        match &self.backend {
            Backend::Gpu(ctx) => {
                let buf = ctx.upload(label, bytemuck::cast_slice(words))?;
                Ok(Tensor::from_gpu(shape.to_vec(), buf))
            }
            Backend::Cpu => {
                let values = words
                    .iter()
                    .flat_map(|&w| [w & 0xffff, w >> 16])
                    .take(n)
                    .map(|h| half::f16::from_bits(h as u16).to_f32())
                    .collect();
                Tensor::from_vec(shape, values)
            }
        }
    }

    /// Run one op. On the GPU the dispatch is recorded; nothing is submitted.
    pub fn run<O: Op + ?Sized>(&mut self, op: &O, inputs: &[&Tensor]) -> Result<Tensor> {
        let name = op.name();
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let out_shape = op.output_shape(&shapes)?;
        self.ops += 1;
        match &self.backend {
            Backend::Cpu => {
                let data = cpu_inputs(name, inputs)?;
                let mut out = vec![0f32; numel(&out_shape)];
                op.cpu(&shapes, &data, &mut out);
                Tensor::from_vec(&out_shape, out)
            }
            Backend::Gpu(ctx) => {
                let args = gpu_inputs(name, inputs)?;
                let bytes = output_bytes(ctx, name, "the output", &out_shape)?;
                let pool = self
                    .pool
                    .get_or_insert_with(|| BufferPool::new(ctx.device.clone()));
                for t in inputs {
                    if let Some(b) = t.gpu_buffer() {
                        if !b.belongs_to(pool) {
                            self.rec.hold(b.clone());
                        }
                    }
                }
                let out = Arc::new(pool.get(name, bytes));
                let out_arg = GpuArg {
                    shape: &out_shape,
                    buffer: out.buffer(),
                };
                op.record(ctx, &mut self.rec, &args, &out_arg)?;
                Ok(Tensor::from_gpu(out_shape, out))
            }
        }
    }

    /// Runs an op with two outputs of one shape (e.g. a solver update that also writes the
    /// model output it keeps); otherwise as [`Exec::run`].
    pub fn run_pair<O: PairOp + ?Sized>(
        &mut self,
        op: &O,
        inputs: &[&Tensor],
    ) -> Result<(Tensor, Tensor)> {
        let name = op.name();
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let out_shape = op.output_shape(&shapes)?;
        self.ops += 1;
        match &self.backend {
            Backend::Cpu => {
                let data = cpu_inputs(name, inputs)?;
                let mut out = vec![0f32; numel(&out_shape)];
                let mut out2 = vec![0f32; numel(&out_shape)];
                op.cpu(&shapes, &data, &mut out, &mut out2);
                Ok((
                    Tensor::from_vec(&out_shape, out)?,
                    Tensor::from_vec(&out_shape, out2)?,
                ))
            }
            Backend::Gpu(ctx) => {
                let args = gpu_inputs(name, inputs)?;
                let bytes = output_bytes(ctx, name, "the outputs", &out_shape)?;
                let pool = self
                    .pool
                    .get_or_insert_with(|| BufferPool::new(ctx.device.clone()));
                for t in inputs {
                    if let Some(b) = t.gpu_buffer() {
                        if !b.belongs_to(pool) {
                            self.rec.hold(b.clone());
                        }
                    }
                }
                let out = Arc::new(pool.get(name, bytes));
                let out2 = Arc::new(pool.get(name, bytes));
                let a = GpuArg {
                    shape: &out_shape,
                    buffer: out.buffer(),
                };
                let b = GpuArg {
                    shape: &out_shape,
                    buffer: out2.buffer(),
                };
                op.record(ctx, &mut self.rec, &args, &a, &b)?;
                Ok((
                    Tensor::from_gpu(out_shape.clone(), out),
                    Tensor::from_gpu(out_shape, out2),
                ))
            }
        }
    }

    /// Drops what is recorded and not yet submitted: after a failed run (a size refused or
    /// an allocation failed mid-step), so its half-recorded step, which may bind invalid
    /// buffers, does not go out with the next submit.
    pub fn discard_pending(&mut self) {
        drop(self.rec.take());
    }

    /// Submit everything recorded (one submit).
    pub fn submit(&mut self) -> Result<()> {
        if let Backend::Gpu(ctx) = &self.backend {
            if !self.rec.is_empty() {
                self.submits += 1;
                self.dispatches_submitted += self.rec.dispatch_count();
            }
            ctx.submit(self.rec.take())?;
        }
        Ok(())
    }

    /// Submits what is recorded with every dispatch in its own compute pass bracketed by
    /// timestamp queries, waits, and returns each dispatch's GPU time (benchmarks only: the
    /// extra passes cost barriers the normal one-pass submit does not have). `None` when the
    /// device has no `TIMESTAMP_QUERY` (then nothing was submitted).
    pub async fn submit_timed(&mut self) -> Result<Option<Vec<crate::gpu::OpTime>>> {
        let Backend::Gpu(ctx) = &self.backend else {
            return Ok(None);
        };
        let ctx = ctx.clone();
        if !ctx.caps.timestamp_query {
            return Ok(None);
        }
        self.submits += 1;
        self.dispatches_submitted += self.rec.dispatch_count();
        ctx.submit_timed(self.rec.take()).await.map(Some)
    }

    /// Submit what is recorded and read a tensor back. Never blocks on the web.
    pub async fn read(&mut self, t: &Tensor) -> Result<Vec<f32>> {
        let mut v = self.read_many(&[t]).await?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Read several tensors back with one submit and one map.
    pub async fn read_many(&mut self, ts: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        let ctx = match &self.backend {
            Backend::Gpu(ctx) => ctx.clone(),
            Backend::Cpu => {
                return ts
                    .iter()
                    .map(|t| {
                        t.cpu_data().map(|d| d.to_vec()).ok_or(Error::Backend {
                            op: "read",
                            index: 0,
                            expected: "cpu",
                            got: "gpu",
                        })
                    })
                    .collect()
            }
        };
        let mut ranges = Vec::new();
        let mut cpu = Vec::new();
        for t in ts {
            match &t.data {
                Data::Gpu(b) => ranges.push((b.buffer(), 0, t.byte_len())),
                Data::Cpu(v) => cpu.push(v.to_vec()),
            }
        }
        let rec = self.rec.take();
        self.submits += 1;
        self.dispatches_submitted += rec.dispatch_count();
        let mut bytes = ctx.submit_and_read(rec, &ranges).await?.into_iter();
        let mut cpu = cpu.into_iter();
        Ok(ts
            .iter()
            .map(|t| match t.data {
                Data::Gpu(_) => bytemuck::pod_collect_to_vec(&bytes.next().unwrap_or_default()),
                Data::Cpu(_) => cpu.next().unwrap_or_default(),
            })
            .collect())
    }
}

/// The inputs' host data; a GPU tensor on the CPU executor is `Error::Backend`.
fn cpu_inputs<'a>(name: &'static str, inputs: &[&'a Tensor]) -> Result<Vec<&'a [f32]>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.cpu_data().ok_or(Error::Backend {
                op: name,
                index: i,
                expected: "cpu",
                got: "gpu",
            })
        })
        .collect()
}

/// The inputs' GPU buffers; a host tensor on the GPU executor is `Error::Backend`.
fn gpu_inputs<'a>(name: &'static str, inputs: &[&'a Tensor]) -> Result<Vec<GpuArg<'a>>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let buffer = t.gpu_buffer().ok_or(Error::Backend {
                op: name,
                index: i,
                expected: "gpu",
                got: "cpu",
            })?;
            Ok(GpuArg {
                shape: t.shape(),
                buffer: buffer.buffer(),
            })
        })
        .collect()
}

/// Bytes of one f32 output of `shape` (at least 4), checked against `maxBufferSize` in 64
/// bits so a wasm32 `usize` cannot wrap.
fn output_bytes(ctx: &GpuContext, name: &'static str, what: &str, shape: &[usize]) -> Result<u64> {
    let bytes = (numel_u64(shape).saturating_mul(4)).max(4);
    if bytes > ctx.caps.max_buffer() {
        return Err(Error::Limit {
            op: name,
            what: format!("{what} of shape {shape:?}"),
            limit: "maxBufferSize",
            value: ctx.caps.max_buffer(),
            needed: bytes,
            hint: "use a smaller batch or resolution",
        });
    }
    Ok(bytes)
}
