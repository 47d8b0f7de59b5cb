//! Every example program, run in a small mode as a user would run it: each one checks its own result
//! against a sequential computation and exits non-zero when it is wrong, so exit 0 is the assertion.
//!
//! `cargo test` builds the examples before it runs the tests; a plain `cargo test --test ipc` does not,
//! and then these tests fail with a message saying how to build them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::Trial;

use crate::common::{self, Role};

/// Generous: the examples take well under a few seconds each in debug builds.
const BOUND: Duration = Duration::from_secs(120);

pub const ROLES: &[Role] = &[];

pub fn tests() -> Vec<Trial> {
    let simple: &[(&str, &[&str])] = &[
        ("array_stats", &["--n", "300000"]),
        ("queue_producer_consumer", &["--n", "3000"]),
        ("parallel_delayed", &["--small"]),
        ("pool_map", &[]),
        ("process_basics", &[]),
        ("lock_counter", &[]),
        ("manager_dict", &[]),
        ("task_panic", &[]),
    ];
    let mut trials: Vec<Trial> = simple
        .iter()
        .map(|&(name, args)| {
            Trial::test(format!("examples_run::{name}"), move || {
                run_example(name, args);
                Ok(())
            })
        })
        .collect();
    trials.push(Trial::test(
        "examples_run::image_pipeline_synthetic",
        || {
            image_pipeline_synthetic();
            Ok(())
        },
    ));
    trials.push(Trial::test("examples_run::image_pipeline_folder", || {
        image_pipeline_folder();
        Ok(())
    }));
    trials
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(common::unique_name(what));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs an example to its end (bounded) and returns its stdout; panics with its output unless it
/// exits 0. Output goes to files, so a chatty program cannot block on a full pipe.
fn run_example(name: &str, args: &[&str]) -> String {
    let scratch = Scratch::new(&format!("out-{name}"));
    let (out, err) = (scratch.0.join("stdout"), scratch.0.join("stderr"));
    let mut child = Command::new(common::example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start example {name}: {e}"));
    let status = common::wait_bounded(&mut child, BOUND);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        status.success(),
        "example {name} {args:?} failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

#[track_caller]
fn assert_gray_png(path: &Path, w: u32, h: u32) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a readable image: {e}", path.display()))
        .to_luma8();
    assert_eq!((img.width(), img.height()), (w, h), "{}", path.display());
    assert!(
        img.pixels().any(|p| p.0[0] > 0),
        "{}: no edge at all",
        path.display()
    );
}

fn image_pipeline_synthetic() {
    let scratch = Scratch::new("edges");
    let png = scratch.0.join("edges.png");
    let stdout = run_example(
        "image_pipeline",
        &["--size", "256", "--out", png.to_str().expect("utf-8 path")],
    );
    assert!(
        stdout.contains("all 65536 edge pixels identical"),
        "unexpected output:\n{stdout}"
    );
    assert_gray_png(&png, 256, 256);
}

fn image_pipeline_folder() {
    let scratch = Scratch::new("photos");
    let (photos, out) = (scratch.0.join("in"), scratch.0.join("out"));
    std::fs::create_dir_all(&photos).expect("mkdir");
    let sizes = [("a.png", 96, 64), ("b.png", 40, 72), ("c.jpg", 64, 64)];
    for &(name, w, h) in &sizes {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let on = (x / 8 + y / 8) % 2 == 0;
            image::Rgb([if on { 220 } else { 20 }, (x * 3) as u8, (y * 2) as u8])
        });
        img.save(photos.join(name)).expect("write a test image");
    }
    std::fs::write(photos.join("notes.txt"), "not an image").expect("write");
    let stdout = run_example(
        "image_pipeline",
        &[
            photos.to_str().expect("utf-8 path"),
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        stdout.contains("3 of 3 images"),
        "unexpected output:\n{stdout}"
    );
    for &(name, w, h) in &sizes {
        let stem = name.split('.').next().expect("a stem");
        assert_gray_png(&out.join(format!("{stem}-edges.png")), w, h);
    }
}
