//! Finding the CUDA libraries the GPU routes load at run time, before a runtime does, so that a missing
//! one is named together with what installs it (instead of a provider that "fails to register" or a
//! panic deep inside a runtime).
//!
//! A library is looked up by its soname the way the dynamic loader does (`LD_LIBRARY_PATH`, the
//! ldconfig cache), then in the folders of `GRADEKIT_CUDA_LIBS` (colon-separated) and in the
//! `nvidia/*/lib` folders of pip installs next to the ONNX Runtime library (`pip install
//! 'onnxruntime-gpu[cuda,cudnn]'`, or `scripts/install-onnxruntime.sh --gpu`). One found in a folder is
//! loaded from there, globally, and stays loaded: the runtime's own `dlopen` of the same soname then
//! finds it already in the process, so no `LD_LIBRARY_PATH` is needed.

use std::path::{Path, PathBuf};

/// One shared library a CUDA route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaLib {
    pub soname: &'static str,
    /// What it is, for the error message.
    pub what: &'static str,
    /// The PyPI package that ships it.
    pub pip: &'static str,
}

/// The NVIDIA driver's CUDA library (comes with the driver, never from pip).
pub const DRIVER: &str = "libcuda.so.1";

/// What ONNX Runtime 1.31.1's CUDA provider loads: its `DT_NEEDED` entries (`readelf -d
/// libonnxruntime_providers_cuda.so` of the `onnxruntime-gpu` wheel), dependencies first, and cuDNN 9,
/// which it opens at run time.
pub const ORT_CUDA_LIBS: &[CudaLib] = &[
    CudaLib { soname: "libcudart.so.13", what: "CUDA 13 runtime", pip: "nvidia-cuda-runtime" },
    CudaLib { soname: "libcublasLt.so.13", what: "cuBLASLt 13", pip: "nvidia-cublas" },
    CudaLib { soname: "libcublas.so.13", what: "cuBLAS 13", pip: "nvidia-cublas" },
    CudaLib { soname: "libcurand.so.10", what: "cuRAND 10", pip: "nvidia-curand" },
    CudaLib { soname: "libcudnn.so.9", what: "cuDNN 9", pip: "nvidia-cudnn-cu13" },
];

/// What tract-cuda (cudarc, dynamic loading, CUDA 13 API) opens: the runtime, NVRTC (its kernels are
/// compiled at first use), cuBLAS and cuDNN 9.
pub const TRACT_CUDA_LIBS: &[CudaLib] = &[
    CudaLib { soname: "libcudart.so.13", what: "CUDA 13 runtime", pip: "nvidia-cuda-runtime" },
    CudaLib { soname: "libnvrtc.so.13", what: "NVRTC 13", pip: "nvidia-cuda-nvrtc" },
    CudaLib { soname: "libcublasLt.so.13", what: "cuBLASLt 13", pip: "nvidia-cublas" },
    CudaLib { soname: "libcublas.so.13", what: "cuBLAS 13", pip: "nvidia-cublas" },
    CudaLib { soname: "libcudnn.so.9", what: "cuDNN 9", pip: "nvidia-cudnn-cu13" },
];

/// How a library was found, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// By soname, through the loader's own search.
    System,
    /// In one of the extra folders (loaded from there).
    In(PathBuf),
    /// Not found anywhere.
    Missing,
    /// A file of that name exists in an extra folder but does not load (wrong architecture, missing
    /// dependency, not a library): the loader's message.
    Broken(PathBuf, String),
}

fn load_global(path: &std::ffi::OsStr) -> Result<(), String> {
    // RTLD_GLOBAL so that later libraries resolve their symbols against it; RTLD_NOW to surface a missing
    // dependency here rather than at the first call.
    // SAFETY: loading a CUDA library runs its initialisers, as the runtime that needs it would anyway.
    match unsafe { libloading::os::unix::Library::open(Some(path), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL) } {
        Ok(lib) => {
            // Stays loaded for the life of the process, like the runtime's own dlopen would.
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Looks for `soname` as described in the module documentation; loads it when found.
pub fn find(soname: &str, extra_dirs: &[PathBuf]) -> Found {
    if load_global(std::ffi::OsStr::new(soname)).is_ok() {
        return Found::System;
    }
    for d in extra_dirs {
        let p = d.join(soname);
        if p.exists() {
            return match load_global(p.as_os_str()) {
                Ok(()) => Found::In(p),
                Err(e) => Found::Broken(p, e),
            };
        }
    }
    Found::Missing
}

/// Whether the NVIDIA driver's CUDA library loads.
pub fn driver_present() -> bool {
    load_global(std::ffi::OsStr::new(DRIVER)).is_ok()
}

/// The extra folders searched: `GRADEKIT_CUDA_LIBS`, then `nvidia/*/lib` of the pip install holding
/// `ort_library` (`.../onnxruntime/capi/libonnxruntime.so.*`), when given.
pub fn extra_dirs(ort_library: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("GRADEKIT_CUDA_LIBS")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if let Some(site) = ort_library.and_then(|l| l.parent()).and_then(|capi| capi.parent()).and_then(|pkg| pkg.parent()) {
        dirs.extend(nvidia_lib_dirs(site));
    }
    dirs
}

/// `SITE/nvidia/*/lib` folders (the layout of NVIDIA's pip wheels: `nvidia/cu13/lib`, `nvidia/cudnn/lib`).
pub fn nvidia_lib_dirs(site: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(site.join("nvidia"))
        .map(|rd| rd.flatten().map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Checks `libs`; `Err` lists each one that is missing or broken, with the pip packages that ship them.
pub fn check(libs: &[CudaLib], extra: &[PathBuf]) -> Result<Vec<(CudaLib, Found)>, String> {
    let found: Vec<(CudaLib, Found)> = libs.iter().map(|l| (*l, find(l.soname, extra))).collect();
    let bad: Vec<String> = found
        .iter()
        .filter_map(|(l, f)| match f {
            Found::Missing => Some(format!("{} ({}) not found", l.soname, l.what)),
            Found::Broken(p, e) => Some(format!("{} ({}) cannot be loaded: {e}", p.display(), l.what)),
            _ => None,
        })
        .collect();
    if bad.is_empty() {
        return Ok(found);
    }
    let mut pips: Vec<&str> = found.iter().filter(|(_, f)| !matches!(f, Found::System | Found::In(_))).map(|(l, _)| l.pip).collect();
    pips.dedup();
    let searched = if extra.is_empty() {
        "the loader's path".to_string()
    } else {
        format!("the loader's path and {}", extra.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))
    };
    Err(format!(
        "{} (searched {searched}). They come from PyPI ({}): put their `nvidia/*/lib` folders on LD_LIBRARY_PATH \
         (e.g. LD_LIBRARY_PATH=$SITE/nvidia/cu13/lib:$SITE/nvidia/cudnn/lib) or name them in GRADEKIT_CUDA_LIBS",
        bad.join("; "),
        pips.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE: CudaLib = CudaLib { soname: "libgradekit-test-missing.so.13", what: "test library", pip: "nvidia-test-package" };

    #[test]
    fn a_missing_library_is_named_with_its_package_and_the_folders_searched() {
        let dir = tempfile::tempdir().unwrap();
        let err = check(&[FAKE], &[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.contains("libgradekit-test-missing.so.13 (test library) not found"), "{err}");
        assert!(err.contains("nvidia-test-package"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("LD_LIBRARY_PATH"), "{err}");
    }

    #[test]
    fn a_file_that_is_no_library_is_reported_with_the_loader_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FAKE.soname), b"not an ELF file").unwrap();
        match find(FAKE.soname, &[dir.path().to_path_buf()]) {
            Found::Broken(p, e) => {
                assert_eq!(p, dir.path().join(FAKE.soname));
                assert!(!e.is_empty());
            }
            other => panic!("expected Broken, got {other:?}"),
        }
        let err = check(&[FAKE], &[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.contains("cannot be loaded"), "{err}");
    }

    #[test]
    fn a_library_in_an_extra_folder_is_found_and_loaded_from_there() {
        // Any real shared library under the soname asked for stands in for a CUDA one.
        let Some(real) = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib64/libz.so.1"]
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
        else {
            eprintln!("no libz.so.1 to stand in for a CUDA library; skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let name = "libgradekit-test-present.so.13";
        std::fs::copy(real, dir.path().join(name)).unwrap();
        assert_eq!(find(name, &[]), Found::Missing);
        assert_eq!(find(name, &[dir.path().to_path_buf()]), Found::In(dir.path().join(name)));
        let lib = CudaLib { soname: name, what: "stand-in", pip: "none" };
        let ok = check(&[lib], &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(ok[0].1, Found::In(dir.path().join(name)));
    }

    #[test]
    fn pip_layouts_next_to_the_ort_library_are_searched() {
        let site = tempfile::tempdir().unwrap();
        let capi = site.path().join("onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::create_dir_all(site.path().join("nvidia/cudnn/lib")).unwrap();
        std::fs::create_dir_all(site.path().join("nvidia/cu13/lib")).unwrap();
        std::fs::create_dir_all(site.path().join("nvidia/empty")).unwrap();
        let dirs = extra_dirs(Some(&capi.join("libonnxruntime.so.1.31.1")));
        assert!(dirs.ends_with(&[site.path().join("nvidia/cu13/lib"), site.path().join("nvidia/cudnn/lib")]), "{dirs:?}");
    }
}
