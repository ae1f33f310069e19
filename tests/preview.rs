//! The native preview window, under a virtual X server (Xvfb) that this test starts itself.
//!
//! Its own `main` (`harness = false`): winit wants the main thread and allows one event loop
//! per process, so one window run happens here and the bad-display case runs in a child
//! process of this binary. Without Xvfb the window part is skipped, unless
//! `WEBDIFFUSION_REQUIRE_GPU=1` (CI), where it fails: `scripts/setup.sh` installs `xvfb` and
//! `x11-apps` (xwd).
//!
//! Checks: no display and an unreachable display are clear errors, not panics; a fake
//! sampling run shows three frames of known tensors; the window presents frames; the last
//! presented frame (read back from the surface texture) equals the CPU twin of the render
//! shader for that frame; and the X server's own copy of the window (`xwd -root`) shows the
//! same pixels. `sample --preview` and `sd --preview` (linear and tiny-autoencoder step
//! previews) run end to end and write the image they write without a window.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use webdiffusion::preview::{self, PreviewOptions};
use webdiffusion::render::{render_cpu, Layout};
use webdiffusion::sampling::solvers::{Control, StepInfo};
use webdiffusion::{Exec, GpuContext};

const TITLE: &str = "webdiffusion preview test";
const SHAPE: [usize; 4] = [3, 1, 6, 5];
const STEPS: usize = 3;

fn required() -> bool {
    std::env::var("WEBDIFFUSION_REQUIRE_GPU").as_deref() == Ok("1")
}

/// Frame `step`'s values of panel `panel`: a pattern in [-1, 1] that differs per step.
fn frame_values(step: usize, panel: usize) -> Vec<f32> {
    let n: usize = SHAPE.iter().product();
    (0..n)
        .map(|i| ((i * 7 + step * 13 + panel * 29) % 41) as f32 / 20.0 - 1.0)
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--child-bad-display") {
        child_bad_display();
        return;
    }
    no_display_is_an_error();
    bad_display_is_an_error();
    let Some(xvfb) = Xvfb::start() else {
        if required() {
            eprintln!("preview test: WEBDIFFUSION_REQUIRE_GPU=1 but Xvfb could not be started (install the Debian package `xvfb`: scripts/setup.sh does)");
            std::process::exit(1);
        }
        eprintln!("preview test: skipping the window checks: no Xvfb (Debian package `xvfb`)");
        return;
    };
    std::env::set_var("DISPLAY", format!(":{}", xvfb.display));
    std::env::remove_var("WAYLAND_DISPLAY");
    window_presents_the_frames(xvfb.display);
    sample_cli_preview(xvfb.display);
    sd_cli_preview(xvfb.display);
    drop(xvfb);
    eprintln!("preview test: ok");
}

/// Runs the CLI on the virtual display with the window closing by itself once the run is
/// done (the test hook); panics with its output when it fails.
fn cli_on_display(display: u32, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args(args)
        .env("DISPLAY", format!(":{display}"))
        .env_remove("WAYLAND_DISPLAY")
        .env(webdiffusion::preview::CLOSE_AFTER_ENV, "1")
        .output()
        .expect("run webdiffusion");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "webdiffusion {args:?} failed: {text}");
    text
}

/// `webdiffusion sample --preview` end to end: the window opens, shows the steps, closes by
/// itself (the test hook) and the PNG is written.
fn sample_cli_preview(display: u32) {
    let dir = std::env::temp_dir().join(format!("wd-preview-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_png = dir.join("p.png");
    let args = "sample --preview --steps 2 --batch 2 --grid --seed 3 --quiet --out";
    let mut args: Vec<&std::ffi::OsStr> = args.split(' ').map(std::ffi::OsStr::new).collect();
    args.push(out_png.as_os_str());
    let text = cli_on_display(display, &args);
    let png = webdiffusion::image::decode_png(&std::fs::read(&out_png).expect("PNG written"))
        .expect("PNG decodes");
    assert_eq!((png.width, png.height), (66, 32), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("sample --preview: ok");
}

/// `webdiffusion sd --preview` on the tiny Stable Diffusion repository, with the linear
/// latent preview and with the tiny autoencoder's: the window shows every step and closes by
/// itself, and the PNG equals the one the same run writes without a window.
fn sd_cli_preview(display: u32) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("wd-preview-sd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = root.join("tests/fixtures/tiny-sd");
    let run = |name: &str, extra: &[&str]| -> Vec<u8> {
        let out_png = dir.join(name);
        let mut args: Vec<&std::ffi::OsStr> = vec!["sd".as_ref(), "--model".as_ref()];
        args.push(model.as_os_str());
        for a in [
            "--prompt",
            "a red cube, on a table",
            "--steps",
            "3",
            "--seed",
            "5",
            "--quiet",
            "--out",
        ] {
            args.push(a.as_ref());
        }
        args.push(out_png.as_os_str());
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let text = cli_on_display(display, &args);
        std::fs::read(&out_png).unwrap_or_else(|e| panic!("sd {extra:?}: no PNG ({e}): {text}"))
    };
    let plain = run("plain.png", &[]);
    let linear = run("linear.png", &["--preview"]);
    let taesd = root.join("tests/fixtures/tiny-taesd");
    let tiny = run(
        "taesd.png",
        &["--preview", "--preview-decoder", taesd.to_str().unwrap()],
    );
    let png = webdiffusion::image::decode_png(&plain).expect("PNG decodes");
    assert_eq!((png.width, png.height), (16, 16));
    assert!(linear == plain, "sd --preview wrote another image than sd");
    assert!(
        tiny == plain,
        "sd --preview --preview-decoder wrote another image than sd"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("sd --preview (linear and tiny-autoencoder previews): ok");
}

fn no_display_is_an_error() {
    let saved = (
        std::env::var_os("DISPLAY"),
        std::env::var_os("WAYLAND_DISPLAY"),
    );
    std::env::remove_var("DISPLAY");
    std::env::remove_var("WAYLAND_DISPLAY");
    let r = preview::run(&PreviewOptions::new(TITLE), |_ctx, _sink| Ok(()));
    let msg = r
        .expect_err("preview without a display must fail")
        .to_string();
    assert!(
        msg.contains("no display for --preview") && msg.contains("xvfb"),
        "unclear error: {msg}"
    );
    if let Some(d) = saved.0 {
        std::env::set_var("DISPLAY", d);
    }
    if let Some(w) = saved.1 {
        std::env::set_var("WAYLAND_DISPLAY", w);
    }
    eprintln!("no display: {msg}");
}

fn bad_display_is_an_error() {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .arg("--child-bad-display")
        .env("DISPLAY", ":87654")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed: {text}");
    assert!(!text.contains("panicked"), "a panic was printed: {text}");
    eprintln!("bad display: {}", text.trim());
}

fn child_bad_display() {
    match preview::run(&PreviewOptions::new(TITLE), |_ctx, _sink| Ok(())) {
        Ok(()) => {
            eprintln!("preview::run succeeded on an unreachable display");
            std::process::exit(1);
        }
        Err(e) => {
            let msg = e.to_string();
            println!("{msg}");
            if !msg.contains("could not connect to the display") {
                std::process::exit(1);
            }
        }
    }
}

struct Xvfb {
    child: Child,
    display: u32,
}

impl Xvfb {
    fn start() -> Option<Xvfb> {
        let base = 90 + std::process::id() % 100;
        for display in base..base + 40 {
            if Path::new(&format!("/tmp/.X{display}-lock")).exists() {
                continue;
            }
            let child = Command::new("Xvfb")
                .args([
                    &format!(":{display}"),
                    "-screen",
                    "0",
                    "800x600x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("preview test: cannot run Xvfb: {e}");
                    return None;
                }
            };
            let socket = format!("/tmp/.X11-unix/X{display}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if Path::new(&socket).exists() {
                    // The socket appears just before the server accepts; give it a moment.
                    std::thread::sleep(Duration::from_millis(200));
                    return Some(Xvfb { child, display });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost a race for this display number; try the next
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        None
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A screenshot from `xwd`: RGB bytes, row-major.
struct Screen {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

/// Parse an XWD dump (X11's `XWDFileHeader`: 25 big-endian u32 fields, the window name,
/// the colour map, then the pixels in the server's byte order) of a 24/32-bit TrueColor
/// screen.
fn parse_xwd(b: &[u8]) -> Screen {
    let f = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    let (header_size, format, width, height) = (f(0), f(2), f(4), f(5));
    let (byte_order, bits_per_pixel, bytes_per_line) = (f(7), f(11), f(12));
    let (red, green, blue, ncolors) = (f(14) as u32, f(15) as u32, f(16) as u32, f(19));
    assert_eq!(format, 2, "xwd: expected a ZPixmap");
    assert_eq!(bits_per_pixel, 32, "xwd: expected 32 bits per pixel");
    let data = &b[header_size + ncolors * 12..];
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let p: [u8; 4] = data[y * bytes_per_line + x * 4..][..4].try_into().unwrap();
            let v = if byte_order == 0 {
                u32::from_le_bytes(p)
            } else {
                u32::from_be_bytes(p)
            };
            for mask in [red, green, blue] {
                rgb.push(((v & mask) >> mask.trailing_zeros()) as u8);
            }
        }
    }
    Screen { width, height, rgb }
}

fn grab_screen(display: u32) -> Result<Option<Screen>, String> {
    let out = match Command::new("xwd")
        .args(["-root", "-silent", "-display", &format!(":{display}")])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            if required() {
                return Err(format!("xwd (Debian package `x11-apps`) is needed: {e}"));
            }
            eprintln!("preview test: no xwd ({e}); not checking the X server's pixels");
            return Ok(None);
        }
    };
    if !out.status.success() {
        return Err(format!(
            "xwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Some(parse_xwd(&out.stdout)))
}

fn test_error(message: String) -> webdiffusion::Error {
    webdiffusion::Error::InvalidArgument {
        op: "preview test",
        message,
    }
}

fn window_presents_the_frames(display: u32) {
    let layout = Layout {
        gap: 1,
        panel_gap: 4,
        background: [10, 20, 30, 255],
    };
    let mut opts = PreviewOptions::new(TITLE);
    opts.close_after_frames = Some(2);
    opts.capture = true;
    opts.max_size = (400, 200);
    opts.layout = layout;
    let started = Instant::now();
    let result = preview::run_with_report(&opts, |ctx: Arc<GpuContext>, sink| {
        eprintln!("{}", ctx.caps.summary());
        let mut exec = Exec::gpu(ctx);
        let mut screen = None;
        for step in 1..=STEPS {
            let x = exec.tensor(&SHAPE, &frame_values(step, 0))?;
            let x0 = exec.tensor(&SHAPE, &frame_values(step, 1))?;
            // Steps 1 and 2 go through the sampling loop's callback, the last through `show`.
            let seq = if step < STEPS {
                let mut error = None;
                let info = StepInfo {
                    index: step - 1,
                    total: STEPS,
                    timestep: 0.0,
                    x: &x,
                    x0: &x0,
                };
                let control = sink.step_callback(&mut error)(&mut exec, &info);
                if let Some(e) = error {
                    return Err(e);
                }
                assert_eq!(control, Control::Continue);
                step as u64
            } else {
                sink.show(&mut exec, &x, &x0, step, STEPS)?
            };
            // Let the window fit itself to the first frame before the last one is judged.
            if step == 1 || step == STEPS {
                if !sink.wait_presented(seq, Duration::from_secs(60)) {
                    return Err(test_error(format!(
                        "frame {seq} was not presented within 60 s"
                    )));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            if step == STEPS {
                screen = grab_screen(display).map_err(test_error)?;
            }
        }
        Ok(screen)
    });
    let (screen, report) = result.unwrap_or_else(|e| panic!("preview::run failed: {e}"));
    eprintln!(
        "preview: {} frames received, {} presented in {:.1} s, surface {:?}",
        report.frames_received,
        report.frames_presented,
        started.elapsed().as_secs_f64(),
        report.surface_format
    );
    assert_eq!(report.frames_received, STEPS as u64);
    assert!(report.frames_presented >= 1, "no frame was presented");
    let cap = report
        .last_capture
        .expect("the surface allows no copies, so the presented frame cannot be checked");
    assert_eq!(
        cap.seq, STEPS as u64,
        "the last presented frame is not the last one shown"
    );
    let want = render_cpu(
        &[&frame_values(STEPS, 0), &frame_values(STEPS, 1)],
        &SHAPE,
        &layout,
        (cap.width, cap.height),
    )
    .unwrap();
    let srgb = report.surface_format.is_some_and(|f| f.is_srgb());
    let tol = u8::from(srgb);
    let worst = cap
        .rgba
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    eprintln!(
        "presented {}x{} frame vs CPU twin: max |diff| = {worst}",
        cap.width, cap.height
    );
    assert!(
        worst <= tol,
        "presented frame differs from the CPU twin by {worst}"
    );
    // Something besides the background was drawn.
    assert!(want.chunks(4).any(|p| p[..3] != layout.background[..3]));

    let Some(screen) = screen else { return };
    // Without a window manager the window sits at the root's origin.
    let (w, h) = (cap.width as usize, cap.height as usize);
    assert!(
        screen.width >= w && screen.height >= h,
        "window larger than the screen"
    );
    let mut bad = 0;
    let mut first = None;
    for y in 0..h {
        for x in 0..w {
            let s = &screen.rgb[(y * screen.width + x) * 3..][..3];
            let c = &cap.rgba[(y * w + x) * 4..][..3];
            if s.iter().zip(c).any(|(a, b)| a.abs_diff(*b) > 1) {
                bad += 1;
                first.get_or_insert((x, y, s.to_vec(), c.to_vec()));
            }
        }
    }
    assert_eq!(
        bad, 0,
        "{bad} pixels on the X screen differ from the presented frame; first (x, y, screen, frame): {first:?}"
    );
    eprintln!("X server shows the presented frame ({w}x{h} pixels)");
}
