// Types of the webdiffusion package (index.js). The engine API follows src/wasm.rs; what
// the package adds is marked "package".

/** Every `code` a {@link WebDiffusionError} can carry. */
export type ErrorCode =
  | 'NO_WEBGPU'
  | 'NO_ADAPTER'
  | 'HTTP'
  | 'NETWORK'
  | 'TRUNCATED'
  | 'BAD_MODEL'
  | 'UNSUPPORTED_CONFIG'
  | 'LIMIT'
  | 'OUT_OF_MEMORY'
  | 'ABORTED'
  | 'BAD_OPTION'
  | 'NOT_LOADED'
  | 'DISPOSED'
  | 'INTERNAL';

export declare const ERROR_CODES: readonly ErrorCode[];

/** What every promise of the engine rejects with: `name` is "WebDiffusionError", `message`
 * says what is wrong and what to do. The same in a worker and on the main thread. */
export declare class WebDiffusionError extends Error {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
  readonly name: 'WebDiffusionError';
  readonly code: ErrorCode;
}

/** Where downloaded weights are kept (package). `none` disables the cache. */
export type CacheStore = 'cache-api' | 'opfs' | 'memory' | 'none';

export interface CreateOptions {
  /** Where the per-step preview and the final image are drawn. A canvas element is handed to
   * the worker with `transferControlToOffscreen()` (once, for good). */
  canvas?: HTMLCanvasElement | OffscreenCanvas;
  powerPreference?: 'low-power' | 'high-performance';
  /** package: run the engine in a module Web Worker (default true) or on this thread. */
  worker?: boolean;
  /** package: the weight cache (default 'cache-api'). */
  cache?: CacheStore;
  /** package: the Cache API cache / OPFS folder name (default DEFAULT_CACHE_NAME). */
  cacheName?: string;
  /** package: where webdiffusion_bg.wasm is, if not next to the package's pkg/webdiffusion.js. */
  wasmUrl?: string | URL;
}

export interface Capabilities {
  webgpu: true;
  adapter: { name: string; vendor: string; architecture: string; backend: string; isFallback: boolean };
  features: { shaderF16: boolean; subgroups: boolean; timestampQuery: boolean };
  limits: {
    maxBufferSize: number;
    maxStorageBufferBindingSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupsPerDimension: number;
    maxStorageBuffersPerShaderStage: number;
  };
  /** The same as one line per fact, for logs. */
  summary?: string;
}

export interface SolverInfo {
  name: string;
  description: string;
  aliases: string[];
  /** Error-controlled step size (dpm_adaptive_12/23): `steps` does not apply, `rtol` and
   * `atol` do, and onStep's `total` is null. */
  adaptive: boolean;
}

export interface LoadProgress {
  /** The file being read (its URL or File name). */
  file: string;
  /** Bytes of that file read so far. */
  loaded: number;
  /** Its size in bytes (null when the server did not say). */
  total: number | null;
  tensorsReady: number;
  tensorsTotal: number;
}

/** package: one per model file fetched through the weight cache. */
export interface CacheEvent {
  url: string;
  /** hit: served from storage; miss: downloading; stored: now in storage; memory: kept in
   * memory only; warning: storage refused (quota), later files are kept in memory. */
  status: 'hit' | 'miss' | 'stored' | 'memory' | 'warning';
  store: CacheStore;
  bytes?: number;
  message?: string;
}

export type FetchLike = (url: string, init?: RequestInit) => Promise<Response>;

export interface LoadOptions {
  onProgress?(p: LoadProgress): void;
  /** Downloads the files (default globalThis.fetch). The weight cache sits in front of it;
   * in worker mode it runs on the calling thread and the body is streamed to the worker. */
  fetch?: FetchLike;
  signal?: AbortSignal;
  /** package: hears the weight cache (hits, misses, quota warnings). */
  onCache?(e: CacheEvent): void;
  /** How Linear/Conv2d weights of a UNet or Stable Diffusion repository are kept on the GPU:
   * 'auto' (default: packed f16 for weights the file stores in f16, which is lossless and
   * half the memory of widening them; f32 otherwise), 'f16' (pack every one: half the
   * memory, f16 precision for f32 files) or 'f32'. No `shader-f16` feature is needed. */
  weights?: 'auto' | 'f16' | 'f32';
  /** Stable Diffusion: the folder URL of a tiny autoencoder (diffusers `AutoencoderTiny`:
   * config.json + diffusion_pytorch_model.safetensors, e.g. madebyollin/taesd for SD 1.x/2.x)
   * whose decoder draws the per-step preview at full size instead of the linear latent → RGB
   * map. Loaded with the repository; an error for other models. */
  previewDecoder?: string | URL;
}

/** A model folder URL, file URLs, or files the user picked (config.json, scheduler_config.json,
 * *.safetensors / *.safetensors.index.json). A folder URL without config.json whose
 * model_index.json names a Stable Diffusion pipeline (or that model_index.json's URL) loads
 * the whole repository: unet/, vae/, text_encoder/, tokenizer/, scheduler/.
 *
 * Picked files may be a whole folder (`<input type="file" webkitdirectory>`: each File's
 * `webkitRelativePath` is its path); among them a `model_index.json` makes them a Stable
 * Diffusion repository, its folder the root. `{ path, file }` gives a file's path in the
 * folder explicitly (`{ path: "unet/config.json", file }`). */
export type ModelSource =
  | string
  | URL
  | Array<string | URL>
  | FileList
  | Array<File | Blob | ModelFile>;

/** A file and its path inside the model folder or repository. */
export interface ModelFile {
  path: string;
  file: Blob;
}

/** The scalar condition of a conditioned model (the terrain model's `difficulty`). */
export interface ConditionInfo {
  /** The GenerateOptions key that sets it (e.g. "difficulty"). */
  name: string;
  min: number;
  max: number;
}

export interface ModelInfo {
  /** "UNet2DModel", "UNet2DConditionModel", "GalaxyScoreNet" (galaxygrad score network,
   * scripts/setup-galaxy.sh) or "GuidedUNetModel" (terrain consistency model,
   * scripts/setup-terrain.sh); the folder's weights are then model.safetensors. */
  className: string;
  width: number;
  height: number;
  channels: number;
  numClassEmbeds: number | null;
  nullClass: number | null;
  parameters: number;
  /** Bytes of the weight files' tensors as stored in them. */
  weightBytes: number;
  /** Stable Diffusion: bytes the weights take on the GPU (packed f16 counts 2 a value). */
  gpuWeightBytes?: number;
  /** Stable Diffusion: what draws the per-step preview ('taesd' when `previewDecoder` was
   * loaded, else 'linear'; 'none' for latents the linear map is not defined for). */
  previewDecoder?: 'taesd' | 'linear' | 'none';
  predictionType: string | null;
  /** "consistency" for GuidedUNetModel (its only sampler). */
  defaultSolver: string;
  defaultGuidance: number;
  /** Bytes fetched, all files. */
  bytesRead: number;
  loadMs: number;
  /** GalaxyScoreNet / GuidedUNetModel: the condition `generate` requires (null: none). */
  condition?: ConditionInfo | null;
  /** GalaxyScoreNet / GuidedUNetModel: how `pixels` and the canvas show a sample. */
  render?: 'image' | 'relief' | 'asinh';
  /** "stable-diffusion" for a pipeline repository (className is then model_index.json's
   * pipeline class): `generate` takes a `prompt`. Absent for single networks. */
  kind?: 'stable-diffusion';
  /** Stable Diffusion: model_index.json's class of each component. */
  components?: { unet: string; vae: string; text_encoder: string; tokenizer: string; scheduler: string };
  /** Stable Diffusion: the VAE's latent channels (width/height are the image's). */
  latentChannels?: number;
  defaultSteps?: number;
}

export interface StepInfo {
  /** 1-based step just finished (adaptive solvers: steps accepted so far). */
  step: number;
  /** null for the adaptive solvers: their step count is decided while they run. */
  total: number | null;
  /** Wall time of that step in milliseconds. */
  ms: number;
  /** Adaptive solvers only: whether this attempted step was accepted, the rejections so far
   * and the model time reached. An adaptive run does not wait for a promise onStep returns. */
  accepted?: boolean;
  rejected?: number;
  timestep?: number;
}

export interface GenerateOptions {
  /** A name or alias from `solvers()`. */
  solver?: string;
  steps?: number;
  /** A number up to 2^53 - 1, or a BigInt up to 2^64 - 1. */
  seed?: number | bigint;
  /** Guidance other than 1 needs a model whose null class the engine knows (`nullClass`). */
  guidance?: number;
  /** One label for the whole batch, or one per sample (default 0, 1, 2, … like the CLI). */
  classLabel?: number | number[];
  eta?: number;
  /** Samples per run (default 1). Stable Diffusion: images from the one prompt, as
   * diffusers' num_images_per_prompt (at most 16; one batched UNet pass per step, each image
   * its own noise from the seed, image 0 the same as a batch of one). */
  batch?: number;
  /** What the canvas shows after each step (default x0). */
  preview?: 'x0' | 'xt' | 'none';
  /** May return a promise: the engine holds the next step until it settles. */
  onStep?(s: StepInfo): void | Promise<unknown>;
  /** Adaptive solvers (dpm_adaptive_12/23): relative and absolute error tolerance
   * (default 0.05 and 0.0078, the paper's); a BAD_OPTION for other solvers. */
  rtol?: number;
  atol?: number;
  /** analytic_dpm / analytic_ddim: data samples Γ is estimated from, K·C·H·W values in the
   * model's range, or the URL of a .safetensors file (the held-out digit layout, or one
   * float32 (K, C, H, W) tensor). Default for the bundled model: its folder's
   * eval/heldout.safetensors, fetched on demand. */
  momentData?: Float32Array | string | URL;
  /** How many data samples the Γ estimate averages over (default 100, as the CLI). */
  momentSamples?: number;
  /** GuidedUNetModel (terrain): its condition, required, within `ModelInfo.condition`'s
   * [min, max] (terrain: 0 to 1); one value for the batch or one per sample. Missing or out
   * of range rejects with BAD_OPTION naming it and its range. */
  difficulty?: number | number[];
  /** GuidedUNetModel: the σ points of consistency sampling, decreasing (default [σ_max],
   * one-step; e.g. [80, 2] re-noises once). `steps`, `eta`, `guidance` do not apply. */
  sigmas?: number[];
  /** Stable Diffusion (required there): the text prompt ("" for an unconditional image). */
  prompt?: string;
  /** Stable Diffusion: the unconditional side of classifier-free guidance (default ""). CFG
   * runs when guidance > 1 (default 7.5), as diffusers. */
  negativePrompt?: string;
  /** Stable Diffusion: image size in pixels, multiples of the VAE's factor (default: the
   * UNet's sample_size times that factor). Checked against the adapter's limits first. */
  width?: number;
  height?: number;
  /** Stable Diffusion: overrides the scheduler config's timestep_spacing (SD-Turbo-style
   * one-step sampling uses "trailing"). */
  timestepSpacing?: 'leading' | 'trailing' | 'linspace';
  /** Stable Diffusion image-to-image: the start image (the run takes its size) and how much
   * to change it (0 to 1, default 0.8); any solver but ddim_inverse and consistency. */
  initImage?: ImageData | { width: number; height: number; data: Uint8ClampedArray };
  strength?: number;
  /** Stable Diffusion: unit-variance initial latents (1, C, height/f, width/f), like
   * diffusers' `latents=`; default: drawn from `seed`. */
  initLatents?: Float32Array;
  /** Stable Diffusion: also return the final `latents` and the decoded `image` as floats. */
  raw?: boolean;
  /** Stable Diffusion: decode (and encode) with the VAE in overlapping tiles, as diffusers'
   * `enable_tiling`: "auto" (default: only when the whole pass would exceed the adapter's
   * limits, e.g. SD-1.5 at 512×512 under WebGPU's 128 MiB per binding), "off", or a tile
   * size in pixels (a multiple of 4 × the VAE factor, 32 for SD). */
  vaeTiling?: 'auto' | 'off' | number;
}

export interface GenerateResult {
  width: number;
  height: number;
  /** RGBA, width * height * 4 bytes; a batch is laid out as a grid. */
  pixels: Uint8ClampedArray;
  /** Stable Diffusion adds textMs (prompt encoding) and decodeMs (VAE). */
  timings: { totalMs: number; stepsMs: number[]; loadMs?: number; textMs?: number; decodeMs?: number };
  seed: number;
  /** Stable Diffusion: how many images `pixels` holds (as a grid). */
  batch?: number;
  /** The canonical name of the solver that ran. */
  solver: string;
  steps: number;
  /** Stable Diffusion with `raw: true`: the final latents (what diffusers returns with
   * output_type="latent") and the VAE's image, NCHW in about [-1, 1]. */
  latents?: Float32Array;
  image?: Float32Array;
  /** Stable Diffusion: the VAE tile size in pixels when the VAE ran in tiles, else null. */
  vaeTile?: number | null;
  /** Stable Diffusion: what drew the per-step previews ('none' with `preview: 'none'`). */
  previewDecoder?: 'taesd' | 'linear' | 'none';
}

export declare class Engine {
  private constructor();
  /** Request an adapter and device; rejects with NO_WEBGPU / NO_ADAPTER and what to do. */
  static create(options?: CreateOptions): Promise<Engine>;
  /** package: async, because the wasm may have to be fetched first. */
  static solvers(): Promise<SolverInfo[]>;
  /** package: delete this origin's cached weights. Resolves true when something was deleted. */
  static purgeCache(cacheName?: string): Promise<boolean>;
  /** package: whether this engine runs in a Web Worker. */
  readonly inWorker: boolean;
  capabilities(): Capabilities;
  /** package: the solver menu, synchronously, from a created engine. */
  solvers(): SolverInfo[];
  setCanvas(canvas: HTMLCanvasElement | OffscreenCanvas | null): void;
  load(source: ModelSource, options?: LoadOptions): Promise<ModelInfo>;
  generate(options?: GenerateOptions): Promise<GenerateResult>;
  /** The running load or generate rejects with code ABORTED; the engine stays usable. */
  abort(): void;
  /** Free GPU memory (and stop the worker); later calls reject with DISPOSED. */
  dispose(): void;
  /** package: forget cached weights (this engine's in-memory copies and stored files). */
  purgeCache(): Promise<boolean>;
}

export default Engine;

/** package: delete this origin's cached weights (same as Engine.purgeCache). */
export declare function purgeCache(cacheName?: string): Promise<boolean>;

export declare const DEFAULT_CACHE_NAME: string;

/** package: the caching fetch the engine uses, for callers that drive the wasm directly. */
export declare function createCachingFetch(options?: {
  store?: CacheStore;
  cacheName?: string;
  fetch?: FetchLike;
  onEvent?(e: CacheEvent): void;
}): FetchLike & { using(base: FetchLike): FetchLike; clearMemory(): void };
