//! Every fixture made by real PyTorch (make_pth_fixtures.py) is read back and compared with what
//! PyTorch itself read (fixtures/pth/expected.json); every malformed one must fail, not panic,
//! with an error that names the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gradekit::checkpoint::pth::{load, read_state_dict, read_state_dict_key, strip_prefix, DType, Format, Limits, LoadOptions, TensorData};
use serde_json::Value as J;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pth").join(name)
}

fn expected() -> J {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        DType::I64 => "int64",
        DType::I32 => "int32",
        DType::I16 => "int16",
        DType::I8 => "int8",
        DType::U8 => "uint8",
        DType::Bool => "bool",
    }
}

/// Assert one tensor against PyTorch's description: exact shape, dtype and values; sums to within
/// f64 rounding (torch sums in another order).
fn check_tensor(ctx: &str, t: &TensorData, e: &J) {
    let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(t.shape, shape, "{ctx}: shape");
    assert_eq!(t.numel(), e["numel"].as_u64().unwrap() as usize, "{ctx}: numel");
    assert_eq!(dtype_name(t.dtype), e["dtype"].as_str().unwrap(), "{ctx}: dtype");
    let f = |v: &J| v.as_f64().unwrap() as f32; // json holds f32 values widened exactly to f64
    if let Some(vals) = e.get("values") {
        let want: Vec<f32> = vals.as_array().unwrap().iter().map(f).collect();
        assert_eq!(t.data, want, "{ctx}: values");
    } else {
        let first: Vec<f32> = e["first"].as_array().unwrap().iter().map(f).collect();
        assert_eq!(&t.data[..first.len()], &first[..], "{ctx}: first values");
        assert_eq!(*t.data.last().unwrap(), f(&e["last"]), "{ctx}: last value");
    }
    let sum: f64 = t.data.iter().map(|&v| v as f64).sum();
    let wsum: f64 = t.data.iter().enumerate().map(|(i, &v)| v as f64 * ((i % 7) + 1) as f64).sum();
    let scale = 1.0 + t.data.iter().map(|&v| (v as f64).abs()).sum::<f64>() * 7.0;
    assert!((sum - e["sum"].as_f64().unwrap()).abs() <= 1e-12 * scale, "{ctx}: sum {sum} vs {}", e["sum"]);
    assert!((wsum - e["wsum"].as_f64().unwrap()).abs() <= 1e-12 * scale, "{ctx}: weighted sum {wsum} vs {}", e["wsum"]);
}

#[test]
fn good_fixtures_match_pytorch() {
    let exp = expected();
    let good = exp["good"].as_array().unwrap();
    assert_eq!(good.len(), 9, "expected.json lists all good fixtures");
    for g in good {
        let file = g["file"].as_str().unwrap();
        let key = g["key"].as_str();
        let loaded = load(&fixture(file), &LoadOptions { key, ..Default::default() }).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(loaded.source_key.as_deref(), g["source_key"].as_str(), "{file}: source key");
        assert_eq!(loaded.wrapper_prefix.as_deref(), g["wrapper_prefix"].as_str(), "{file}: wrapper prefix");
        let want = g["tensors"].as_object().unwrap();
        let names: Vec<&String> = loaded.tensors.keys().collect();
        let mut want_names: Vec<&String> = want.keys().collect();
        want_names.sort();
        assert_eq!(names, want_names, "{file}: tensor names");
        for (name, e) in want {
            check_tensor(&format!("{file}:{name}"), &loaded.tensors[name], e);
        }
    }
}

#[test]
fn lenet_classifier_layout() {
    let exp = expected();
    let sd = read_state_dict(&fixture("lenet_classifier.pth")).unwrap();
    let names: Vec<&str> = exp["lenet_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sd.keys().map(String::as_str).collect::<Vec<_>>(), sorted);
    let shapes: BTreeMap<&str, Vec<usize>> = [
        ("conv1.weight", vec![6, 3, 5, 5]),
        ("conv1.bias", vec![6]),
        ("conv2.weight", vec![16, 6, 5, 5]),
        ("conv2.bias", vec![16]),
        ("fc1.weight", vec![128, 256]),
        ("fc1.bias", vec![128]),
        ("fc2.weight", vec![64, 128]),
        ("fc2.bias", vec![64]),
        ("fc3.weight", vec![10, 64]),
        ("fc3.bias", vec![10]),
    ]
    .into_iter()
    .collect();
    for (n, s) in shapes {
        assert_eq!(sd[n].shape, s, "{n}");
        assert_eq!(sd[n].data.len(), s.iter().product::<usize>(), "{n}");
    }
    // Same result with the key given explicitly, and from the loader's report.
    let by_key = read_state_dict_key(&fixture("lenet_classifier.pth"), Some("state_dict")).unwrap();
    assert_eq!(by_key, sd);
    let l = load(&fixture("lenet_classifier.pth"), &LoadOptions::default()).unwrap();
    assert_eq!((l.format, l.big_endian, l.source_key.as_deref()), (Format::Zip, false, Some("state_dict")));
}

#[test]
fn batchnorm_buffers_are_kept() {
    let sd = read_state_dict(&fixture("tiny_bn.pth")).unwrap();
    let nbt = &sd["bn.num_batches_tracked"];
    assert_eq!((nbt.dtype, nbt.shape.as_slice(), nbt.data.as_slice()), (DType::I64, &[][..], &[2.0f32][..]));
    // Two training batches moved the running stats away from their 0 / 1 initial values.
    assert!(sd["bn.running_mean"].data.iter().all(|&v| v != 0.0));
    assert!(sd["bn.running_var"].data.iter().all(|&v| v != 1.0));
    // pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL) gives the same tensors.
    assert_eq!(read_state_dict(&fixture("tiny_bn_proto4.pth")).unwrap(), sd);
}

#[test]
fn views_and_shared_storage_are_materialised() {
    let sd = read_state_dict(&fixture("tiny_views.pth")).unwrap();
    let base = &sd["base"];
    assert_eq!(base.shape, [4, 6]);
    let b = |r: usize, c: usize| base.data[r * 6 + c];
    let tr = &sd["transposed"];
    assert_eq!(tr.shape, [6, 4]);
    for i in 0..6 {
        for j in 0..4 {
            assert_eq!(tr.data[i * 4 + j], b(j, i), "transposed[{i}][{j}]");
        }
    }
    let sl = &sd["sliced"]; // base[1:, ::2]
    assert_eq!(sl.shape, [3, 3]);
    for i in 0..3 {
        for j in 0..3 {
            assert_eq!(sl.data[i * 3 + j], b(i + 1, 2 * j));
        }
    }
    assert_eq!(sd["shared_a"].data, base.data[..6]);
    assert_eq!(sd["shared_b"].data, base.data[12..24]);
    let ex = &sd["expanded"]; // stride 0 along the last dim: each row repeats one value
    assert_eq!(ex.shape, [3, 4]);
    for r in ex.data.chunks(4) {
        assert!(r.iter().all(|&v| v == r[0]));
    }
    assert!(ex.data[0] != ex.data[4]);
    assert_eq!((sd["empty"].shape.as_slice(), sd["empty"].data.len()), (&[0, 3][..], 0));
    assert_eq!(sd["u8"].data, [0.0, 200.0, 255.0]);
    assert_eq!(sd["bool"].data, [1.0, 0.0, 1.0]);
    assert_eq!(sd["i32"].data, [-3.0, 0.0, 5.0]);
    assert_eq!(sd["f64"].data, [1.0f64 / 3.0, -2.5, 1e-8, 12345.678901].map(|v| v as f32));
}

#[test]
fn legacy_and_big_endian_files_read_the_same() {
    let zip = read_state_dict(&fixture("tiny_views.pth")).unwrap();
    let l = load(&fixture("tiny_views_legacy.pth"), &LoadOptions::default()).unwrap();
    assert_eq!(l.format, Format::Legacy);
    assert_eq!(l.tensors, zip);
    let be = load(&fixture("tiny_views_bigendian.pth"), &LoadOptions::default()).unwrap();
    assert!(be.big_endian);
    assert_eq!(be.tensors, zip);
}

#[test]
fn dataparallel_prefix_is_reported_and_stripped() {
    let plain = read_state_dict(&fixture("tiny_bn.pth")).unwrap();
    let f = fixture("dataparallel_checkpoint.pth");
    let l = load(&f, &LoadOptions::default()).unwrap();
    assert_eq!(l.source_key.as_deref(), Some("model")); // "optimizer" (a dict of dicts) is not a candidate
    assert_eq!(l.wrapper_prefix.as_deref(), Some("module."));
    assert!(l.tensors.keys().all(|k| k.starts_with("module.")));
    assert_eq!(strip_prefix(l.tensors, "module.").unwrap(), plain);
    let s = load(&f, &LoadOptions { strip_wrapper_prefix: true, ..Default::default() }).unwrap();
    assert_eq!(s.wrapper_prefix.as_deref(), Some("module."));
    assert_eq!(s.tensors, plain);
}

fn err_of(name: &str, opts: &LoadOptions) -> String {
    // `{:#}` prints the whole context chain: file, tensor name, cause.
    format!("{:#}", load(&fixture(name), opts).expect_err(name))
}

#[test]
fn ambiguous_and_missing_keys_are_explained() {
    let e = err_of("gan_two_nets.pth", &LoadOptions::default());
    assert!(e.contains("ambiguous") && e.contains("\"netG\"") && e.contains("\"netD\""), "{e}");
    let e = err_of("gan_two_nets.pth", &LoadOptions { key: Some("generator"), ..Default::default() });
    assert!(e.contains("\"generator\" not found") && e.contains("\"epoch\" (int)"), "{e}");
    let e = err_of("gan_two_nets.pth", &LoadOptions { key: Some("epoch"), ..Default::default() });
    assert!(e.contains("is a int, not a dict"), "{e}");
}

#[test]
fn malformed_fixtures_fail_with_named_problem() {
    let exp = expected();
    let bad = exp["bad"].as_object().unwrap();
    assert_eq!(bad.len(), 11);
    for (name, phrase) in bad {
        let e = err_of(name, &LoadOptions::default());
        let phrase = phrase.as_str().unwrap();
        assert!(e.contains(phrase), "{name}: error {e:?} should contain {phrase:?}");
        assert!(e.contains(name), "{name}: error should name the file: {e}");
    }
    // The view error names the tensor and both sizes.
    let e = err_of("view_out_of_range.pth", &LoadOptions::default());
    assert!(e.contains("tensor `w`") && e.contains("has only 4 elements"), "{e}");
    let e = err_of("short_storage.pth", &LoadOptions::default());
    assert!(e.contains("holds 8 bytes") && e.contains("16 bytes"), "{e}");
}

#[test]
fn limits_refuse_oversized_inputs() {
    let lenet = "lenet_classifier.pth";
    let lim = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        LoadOptions { limits: l, ..Default::default() }
    };
    // fc1.weight is 128*256 f32 = 131072 bytes; the conv layers before it are smaller.
    let e = err_of(lenet, &lim(|l| l.max_tensor_bytes = 100_000));
    assert!(e.contains("tensor `fc1.weight`") && e.contains("per-tensor limit of 100000"), "{e}");
    let e = err_of(lenet, &lim(|l| l.max_total_bytes = 50_000));
    assert!(e.contains("total limit of 50000"), "{e}");
    let e = err_of(lenet, &lim(|l| l.max_file_bytes = 1000));
    assert!(e.contains("over the limit of 1000 bytes"), "{e}");
    let e = err_of(lenet, &lim(|l| l.max_pickle_bytes = 100));
    assert!(e.contains("data.pkl") && e.contains("limit of 100 bytes"), "{e}");
    let e = err_of(lenet, &lim(|l| l.pickle.max_memo = 5));
    assert!(e.contains("memo exceeds 5"), "{e}");
    // Just enough: every limit at exactly what LeNet needs still loads.
    let ok = lim(|l| {
        l.max_tensor_bytes = 131072;
        l.max_total_bytes = 2 * 4 * 44674;
    });
    assert_eq!(load(&fixture(lenet), &ok).unwrap().tensors.len(), 10);
}

#[test]
fn deflated_records_read_the_same() {
    // torch writes STORED records; a re-zipped checkpoint may use deflate. Rebuild one that way.
    use std::io::{Read, Write};
    let src = fixture("tiny_views.pth");
    let mut za = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
    let out = std::env::temp_dir().join(format!("pth-deflated-{}.pth", std::process::id()));
    let mut w = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for i in 0..za.len() {
        let mut f = za.by_index(i).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        w.start_file(f.name().unwrap().into_owned(), opts).unwrap();
        w.write_all(&b).unwrap();
    }
    w.finish().unwrap();
    let deflated = read_state_dict(&out);
    std::fs::remove_file(&out).ok();
    assert_eq!(deflated.unwrap(), read_state_dict(&src).unwrap());
}
