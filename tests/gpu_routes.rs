//! The CUDA routes (`--device cuda` with ONNX Runtime and with tract-cuda) on whatever machine the tests
//! run on. Without a GPU (CI, the project's build machines) they check that each missing piece is named
//! with what installs it; on a machine where a route works they check it against the CPU instead.
//! Also: ONNX Runtime's IO-binding path (used on CUDA) gives the plain path's outputs, on the CPU.

mod common;

use common::{fixture, grade};
use gradekit::onnx::{ModelFile, ModelLimits};
use gradekit::runtime::{self, cuda_libs, ort_backend, BackendChoice, Device, Input, RuntimeOptions};
use predicates::str::contains;

fn noise_model() -> ModelFile {
    ModelFile::open(&fixture("models/noise-conv.onnx"), &ModelLimits::default()).unwrap()
}

/// A noise-model call of `n` rows, varied by `k`.
fn noise_inputs(n: usize, k: usize) -> (Vec<f32>, Vec<i64>, Vec<i64>) {
    let x = (0..n * 3 * 28 * 28).map(|i| ((i * (k + 3)) as f32 * 0.37).sin()).collect();
    let t = (0..n as i64).map(|i| 1 + (i * 97 + k as i64 * 13) % 998).collect();
    let l = (0..n as i64).map(|i| (i + k as i64) % 11).collect();
    (x, t, l)
}

fn run(e: &mut dyn runtime::Engine, n: usize, k: usize) -> Vec<f32> {
    let (x, t, l) = noise_inputs(n, k);
    let out = e.run(&[Input::f32("x", &[n, 3, 28, 28], &x), Input::i64("t", &[n], &t), Input::i64("label", &[n], &l)], "eps").unwrap();
    assert_eq!(out.shape, vec![n, 3, 28, 28]);
    out.data
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn err_text(r: anyhow::Result<Box<dyn runtime::Engine>>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn tract_on_cuda_names_the_missing_feature_or_driver_or_matches_the_cpu() {
    let file = noise_model();
    let cuda = RuntimeOptions { backend: BackendChoice::Tract, device: Device::Cuda, ..Default::default() };
    if !runtime::TRACT_CUDA_BUILT {
        let err = err_text(runtime::open(&file, &cuda));
        assert!(err.contains("--features tract-cuda") && err.contains("cargo build --release"), "{err}");
        assert!(err.contains("--backend ort"), "{err}");
        return;
    }
    if !cuda_libs::driver_present() {
        let err = err_text(runtime::open(&file, &cuda));
        assert!(err.contains("libcuda.so.1") && err.contains("NVIDIA"), "{err}");
        return;
    }
    // A GPU machine with a tract-cuda build: the same outputs as tract on the CPU.
    let mut gpu = runtime::open(&file, &cuda).unwrap();
    assert_eq!(gpu.info().to_string(), "tract 0.23.9 (cuda)");
    let mut cpu = runtime::open(&file, &RuntimeOptions { backend: BackendChoice::Tract, ..Default::default() }).unwrap();
    for (n, k) in [(7, 0), (7, 1), (3, 2)] {
        let d = max_diff(&run(gpu.as_mut(), n, k), &run(cpu.as_mut(), n, k));
        assert!(d < 1e-4, "tract-cuda vs tract cpu: {d}");
    }
}

#[test]
fn ort_on_cuda_with_the_cpu_build_names_onnxruntime_gpu_or_matches_the_cpu() {
    let lib = common::ort_library();
    let file = noise_model();
    let cuda = RuntimeOptions { backend: BackendChoice::Ort, device: Device::Cuda, ..Default::default() };
    let gpu_build = lib.parent().unwrap().join(ort_backend::CUDA_PROVIDER).is_file();
    if !gpu_build {
        let err = err_text(runtime::open(&file, &cuda));
        assert!(err.contains("CPU build") && err.contains(ort_backend::CUDA_PROVIDER), "{err}");
        assert!(err.contains("onnxruntime-gpu[cuda,cudnn]==1.31.1") && err.contains("install-onnxruntime.sh --gpu"), "{err}");
        return;
    }
    if !cuda_libs::driver_present() {
        let err = err_text(runtime::open(&file, &cuda));
        assert!(err.contains("libcuda.so.1"), "{err}");
        return;
    }
    let mut gpu = runtime::open(&file, &cuda).unwrap();
    assert_eq!(gpu.info().device, Device::Cuda);
    let mut cpu = runtime::open(&file, &RuntimeOptions { backend: BackendChoice::Ort, ..Default::default() }).unwrap();
    for (n, k) in [(7, 0), (7, 1), (3, 2), (7, 3)] {
        let d = max_diff(&run(gpu.as_mut(), n, k), &run(cpu.as_mut(), n, k));
        assert!(d < 1e-4, "ort cuda vs ort cpu: {d}");
    }
}

#[test]
fn ort_cuda_preflight_checks_the_provider_then_the_driver_then_the_libraries() {
    // A stand-in install: the checks look at files, not at what the library is.
    let dir = tempfile::tempdir().unwrap();
    let capi = dir.path().join("onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    let lib = capi.join("libonnxruntime.so.1.31.1");
    std::fs::write(&lib, b"stand-in").unwrap();
    let err = format!("{:#}", ort_backend::cuda_preflight(&lib).unwrap_err());
    assert!(err.contains("CPU build") && err.contains("libonnxruntime_providers_cuda.so"), "{err}");

    std::fs::write(capi.join(ort_backend::CUDA_PROVIDER), b"stand-in").unwrap();
    let err = format!("{:#}", ort_backend::cuda_preflight(&lib).unwrap_err());
    assert!(err.contains("libonnxruntime_providers_shared.so"), "{err}");

    std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"stand-in").unwrap();
    if !cuda_libs::driver_present() {
        let err = format!("{:#}", ort_backend::cuda_preflight(&lib).unwrap_err());
        assert!(err.contains("libcuda.so.1") && err.contains("R580"), "{err}");
        return;
    }
    // With a driver: the CUDA libraries come next; a broken cuDNN in the install's nvidia folder is named
    // (unless the machine's own loader path already has a working one).
    let cudnn = dir.path().join("nvidia/cudnn/lib");
    std::fs::create_dir_all(&cudnn).unwrap();
    std::fs::write(cudnn.join("libcudnn.so.9"), b"not a library").unwrap();
    if let Err(e) = ort_backend::cuda_preflight(&lib) {
        let err = format!("{e:#}");
        assert!(err.contains("onnxruntime-gpu[cuda,cudnn]==1.31.1"), "{err}");
    }
}

#[test]
fn the_grade_command_reports_a_cuda_route_it_cannot_use_with_exit_code_2() {
    if runtime::TRACT_CUDA_BUILT && cuda_libs::driver_present() {
        return; // a GPU machine: nothing to refuse
    }
    let tmp = tempfile::tempdir().unwrap();
    let expect = if runtime::TRACT_CUDA_BUILT { "libcuda.so.1" } else { "--features tract-cuda" };
    grade(tmp.path())
        .args(["check", "--kind", "noise", "--backend", "tract", "--device", "cuda"])
        .arg(fixture("models/noise-conv.onnx"))
        .assert()
        .code(2)
        .stdout(contains(expect));
}

#[test]
fn ort_io_binding_gives_the_plain_outputs_across_alternating_call_layouts() {
    common::ort_library();
    let file = noise_model();
    let opts = RuntimeOptions { backend: BackendChoice::Ort, threads: Some(1), ..Default::default() };
    let mut plain = ort_backend::OrtEngine::open(&file, &opts).unwrap();
    let mut bound = ort_backend::OrtEngine::open(&file, &opts).unwrap();
    assert!(!plain.uses_io_binding(), "the CPU path runs without a binding by default");
    bound.set_io_binding(true);
    // Two layouts alternating (a full batch and a last, shorter one), each seen more than once, so that
    // bindings are made, reused and switched; the data changes every call.
    let calls = [(5, 0), (5, 1), (2, 2), (5, 3), (2, 4), (2, 5), (5, 6)];
    for (n, k) in calls {
        let a = run(&mut plain, n, k);
        let b = run(&mut bound, n, k);
        assert_eq!(a, b, "call of {n} rows, variant {k}");
    }
    assert_eq!(bound.bindings(), 2, "one binding per call layout, reused");
    assert_eq!(plain.bindings(), 0);
}

/// A folder of stand-ins for the NVIDIA driver and CUDA libraries: copies of a real shared library
/// (zlib) under their sonames. They load, but export none of CUDA's symbols, so a route gets past the
/// file checks and stops where it first calls into CUDA. `None` where no zlib is found.
fn cuda_stand_ins(dir: &std::path::Path, names: &[&str]) -> Option<()> {
    let real = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib64/libz.so.1"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())?;
    for n in names {
        std::fs::copy(real, dir.join(n)).unwrap();
    }
    Some(())
}

#[test]
fn tract_cuda_is_linked_and_reached_past_the_library_checks() {
    if !runtime::TRACT_CUDA_BUILT || cuda_libs::driver_present() {
        return; // without the feature: covered above; with a real driver: the parity test runs instead
    }
    let stubs = tempfile::tempdir().unwrap();
    if cuda_stand_ins(stubs.path(), &[cuda_libs::DRIVER]).is_none() {
        return;
    }
    let check = |dir: &std::path::Path| {
        grade(dir)
            .env("LD_LIBRARY_PATH", stubs.path())
            .args(["check", "--kind", "noise", "--backend", "tract", "--device", "cuda"])
            .arg(fixture("models/noise-conv.onnx"))
            .assert()
            .code(2)
    };
    let tmp = tempfile::tempdir().unwrap();
    // A driver but no CUDA libraries: each one is named with its pip package.
    check(tmp.path())
        .stdout(contains("libcudart.so.13 (CUDA 13 runtime) not found"))
        .stdout(contains("libcudnn.so.9 (cuDNN 9) not found"))
        .stdout(contains("nvidia-cudnn-cu13"));
    // Everything present: the check reaches tract-cuda's own runtime (so it is registered in this build),
    // which finds the stand-in driver has no cuInit.
    let names: Vec<&str> = cuda_libs::TRACT_CUDA_LIBS.iter().map(|l| l.soname).collect();
    cuda_stand_ins(stubs.path(), &names).unwrap();
    check(tmp.path()).stdout(contains("tract-cuda cannot use this machine's CUDA")).stdout(contains("cuInit"));
}

#[test]
fn ort_registers_the_cuda_provider_with_error_on_failure() {
    if cuda_libs::driver_present() {
        return; // a GPU machine: the parity test above runs the real provider
    }
    let cpu_lib = common::ort_library();
    // A stand-in GPU install: the real (CPU) libonnxruntime, stand-ins for the provider and the CUDA libraries.
    let site = tempfile::tempdir().unwrap();
    let capi = site.path().join("onnxruntime/capi");
    let nvidia = site.path().join("nvidia/cu13/lib");
    std::fs::create_dir_all(&capi).unwrap();
    std::fs::create_dir_all(&nvidia).unwrap();
    let lib = capi.join("libonnxruntime.so.1.31.1");
    std::fs::copy(&cpu_lib, &lib).unwrap();
    let stubs = tempfile::tempdir().unwrap();
    if cuda_stand_ins(&capi, &[ort_backend::CUDA_PROVIDER, "libonnxruntime_providers_shared.so"]).is_none()
        || cuda_stand_ins(stubs.path(), &[cuda_libs::DRIVER]).is_none()
    {
        return;
    }
    let names: Vec<&str> = cuda_libs::ORT_CUDA_LIBS.iter().map(|l| l.soname).collect();
    cuda_stand_ins(&nvidia, &names).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The preflight passes (the CUDA libraries are found in the install's nvidia/*/lib, without
    // LD_LIBRARY_PATH); ONNX Runtime then cannot register the provider (this CPU build has no CUDA support),
    // and that is an error, not a silent fall-back to the CPU.
    grade(tmp.path())
        .env("LD_LIBRARY_PATH", stubs.path())
        .env("ORT_DYLIB_PATH", &lib)
        .args(["check", "--kind", "noise", "--backend", "ort", "--device", "cuda"])
        .arg(fixture("models/noise-conv.onnx"))
        .assert()
        .code(2)
        .stdout(contains("the CUDA execution provider cannot be used"))
        .stdout(contains("onnxruntime-gpu[cuda,cudnn]==1.31.1"));
}
