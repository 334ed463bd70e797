//! Writes the hand-made seed inputs into fuzz/corpus/<target>/ (seed-* files):
//! `cargo run --example make_seeds -j1` from fuzz/. The fixture files (fixtures/models/*.onnx,
//! a few fixtures/digits images and CSVs) are copied in as well.

use std::path::Path;

use gradekit::onnx::writer::{self, Attr, Dim, Elem, GraphBuilder};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use prost::Message;
use tract_onnx::pb;

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn n() -> Dim {
    Dim::Symbol("N")
}

fn tiny_classifier() -> pb::ModelProto {
    let mut g = GraphBuilder::new("tiny-classifier");
    let x = g.input("image", Elem::F32, &[n(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let p = g.node("GlobalAveragePool", &[&x], &[]);
    let f = g.node("Flatten", &[&p], &[Attr::Int("axis", 1)]);
    let w = g.weight("fc.weight", &[10, 3], &(0..30).map(|i| i as f32 * 0.1 - 1.5).collect::<Vec<_>>());
    let b = g.weight("fc.bias", &[10], &[0.0; 10]);
    let y = g.node("Gemm", &[&f, &w, &b], &[Attr::Int("transB", 1)]);
    g.output("logits", &y, Elem::F32, &[n(), Dim::Fixed(10)]);
    g.metadata("input_mean", "0.5,0.5,0.5");
    g.metadata("input_std", "0.5");
    g.build()
}

fn tiny_generator(latent: usize, four_d: bool, latent_meta: &str) -> pb::ModelProto {
    let mut g = GraphBuilder::new("tiny-generator");
    let dims = if four_d { vec![n(), Dim::Fixed(latent), Dim::Fixed(1), Dim::Fixed(1)] } else { vec![n(), Dim::Fixed(latent)] };
    let z = g.input("z", Elem::F32, &dims);
    let z4 = if four_d {
        z
    } else {
        let s = g.const_i64("shape4", &[4], &[-1, latent as i64, 1, 1]);
        g.node("Reshape", &[&z, &s], &[])
    };
    let mut y = z4;
    if latent != 3 {
        let w = g.weight("proj.weight", &[3, latent, 1, 1], &vec![0.1; 3 * latent]);
        y = g.node("Conv", &[&y, &w], &[Attr::Ints("kernel_shape", vec![1, 1])]);
    }
    let shape = g.const_i64("out_shape", &[4], &[1, 3, 64, 64]);
    let y = g.node("Expand", &[&y, &shape], &[]);
    let y = g.node("Tanh", &[&y], &[]);
    g.output("image", &y, Elem::F32, &[n(), Dim::Fixed(3), Dim::Fixed(64), Dim::Fixed(64)]);
    g.metadata("latent_dim", latent_meta);
    g.metadata("output_range", "-1,1");
    g.build()
}

fn tiny_noise() -> pb::ModelProto {
    let mut g = GraphBuilder::new("tiny-noise");
    let x = g.input("x", Elem::F32, &[n(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let t = g.input("t", Elem::I64, &[n()]);
    let l = g.input("label", Elem::I64, &[n()]);
    let s = g.const_i64("bshape", &[4], &[-1, 1, 1, 1]);
    let tf = g.node("Cast", &[&t], &[Attr::Int("to", 1)]);
    let tf = g.node("Reshape", &[&tf, &s], &[]);
    let lf = g.node("Cast", &[&l], &[Attr::Int("to", 1)]);
    let lf = g.node("Reshape", &[&lf, &s], &[]);
    let k = g.weight("scale", &[1], &[0.001]);
    let a = g.node("Add", &[&tf, &lf], &[]);
    let a = g.node("Mul", &[&a, &k], &[]);
    let y = g.node("Add", &[&x, &a], &[]);
    g.output("eps", &y, Elem::F32, &[n(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    for (k, v) in [
        ("schedule", "linear"),
        ("beta_start", "0.0001"),
        ("beta_end", "0.02"),
        ("timesteps", "1000"),
        ("num_classes", "10"),
        ("null_label", "10"),
        ("guidance_scale", "2"),
    ] {
        g.metadata(k, v);
    }
    g.build()
}

/// A classifier whose weight comes from a Constant node (attribute tensor stored as float_data, not
/// raw bytes), with an If node holding two subgraphs, and its weights also listed as graph inputs
/// (older exporters do that).
fn structured_classifier() -> pb::ModelProto {
    let mut m = tiny_classifier();
    let g = m.graph.as_mut().unwrap();
    let tensor = pb::TensorProto {
        name: "c".into(),
        dims: vec![1],
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: vec![2.0],
        ..Default::default()
    };
    let attr_t = pb::AttributeProto {
        name: "value".into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(tensor.clone()),
        ..Default::default()
    };
    g.node.push(pb::NodeProto {
        op_type: "Constant".into(),
        output: vec!["two".into()],
        name: "const_two".into(),
        attribute: vec![attr_t.clone()],
        ..Default::default()
    });
    let branch = |name: &str, v: f32| pb::GraphProto {
        name: name.into(),
        node: vec![pb::NodeProto {
            op_type: "Constant".into(),
            output: vec![format!("{name}_out")],
            attribute: vec![pb::AttributeProto {
                name: "value".into(),
                r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                t: Some(pb::TensorProto { float_data: vec![v], ..tensor.clone() }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto { name: format!("{name}_out"), ..Default::default() }],
        ..Default::default()
    };
    g.initializer.push(pb::TensorProto {
        name: "cond".into(),
        dims: vec![],
        data_type: pb::tensor_proto::DataType::Bool as i32,
        int32_data: vec![1],
        ..Default::default()
    });
    g.node.push(pb::NodeProto {
        op_type: "If".into(),
        input: vec!["cond".into()],
        output: vec!["picked".into()],
        name: "if".into(),
        attribute: vec![
            pb::AttributeProto {
                name: "then_branch".into(),
                r#type: pb::attribute_proto::AttributeType::Graph as i32,
                g: Some(branch("then", 1.0)),
                ..Default::default()
            },
            pb::AttributeProto {
                name: "else_branch".into(),
                r#type: pb::attribute_proto::AttributeType::Graph as i32,
                g: Some(branch("else", 0.0)),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    // Weights listed among the inputs, as torch.onnx.export with keep_initializers_as_inputs does.
    let inputs: Vec<pb::ValueInfoProto> =
        g.initializer.iter().map(|t| pb::ValueInfoProto { name: t.name.clone(), ..Default::default() }).collect();
    g.input.extend(inputs);
    m
}

fn image_bytes(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.parent().unwrap();
    let corpus = root.join("corpus");

    // model_contract
    let dir = corpus.join("model_contract");
    for f in std::fs::read_dir(repo.join("fixtures/models")).unwrap() {
        let p = f.unwrap().path();
        put(&dir, &format!("seed-fixture-{}", p.file_name().unwrap().to_str().unwrap()), &std::fs::read(&p).unwrap());
    }
    put(&dir, "seed-tiny-classifier.onnx", &writer::to_bytes(&tiny_classifier()));
    put(&dir, "seed-tiny-generator-4d.onnx", &writer::to_bytes(&tiny_generator(3, true, "3")));
    put(&dir, "seed-tiny-generator-2d.onnx", &writer::to_bytes(&tiny_generator(8, false, "8")));
    put(&dir, "seed-generator-bad-latent.onnx", &writer::to_bytes(&tiny_generator(4, false, "four")));
    put(&dir, "seed-tiny-noise.onnx", &writer::to_bytes(&tiny_noise()));
    put(&dir, "seed-structured-classifier.onnx", &writer::to_bytes(&structured_classifier()));
    let mut external = tiny_classifier();
    external.graph.as_mut().unwrap().initializer[0].data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    put(&dir, "seed-external-data.onnx", &external.encode_to_vec());

    // model_contract regressions: inputs on which tract panicked (contained by TractEngine::open's
    // catch_unwind, but printed as a panic); the first two are now refused by ModelFile first.
    let reg = root.join("regressions/model_contract");
    let mut dangling = tiny_classifier();
    dangling.graph.as_mut().unwrap().output[0].name = "nowhere".into();
    put(&reg, "tract-panic-graph-output-not-produced.onnx", &dangling.encode_to_vec());
    let mut raw_string = tiny_classifier();
    raw_string.graph.as_mut().unwrap().initializer[1].data_type = pb::tensor_proto::DataType::String as i32;
    put(&reg, "tract-panic-raw-data-string-tensor.onnx", &raw_string.encode_to_vec());
    let mut zero_sized = tiny_classifier();
    zero_sized.graph.as_mut().unwrap().initializer.push(pb::TensorProto {
        name: "empty".into(),
        dims: vec![4, 144115188075855871, 8, 0],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        ..Default::default()
    });
    put(&reg, "tract-panic-zero-sized-tensor-huge-dims.onnx", &zero_sized.encode_to_vec());
    let mut sub = structured_classifier();
    let g = sub.graph.as_mut().unwrap();
    let if_node = g.node.iter_mut().find(|n| n.op_type == "If").unwrap();
    if_node.attribute[0].g.as_mut().unwrap().output[0].name = "nowhere".into();
    put(&reg, "tract-panic-subgraph-output-not-produced.onnx", &sub.encode_to_vec());

    // label_csv
    let dir = corpus.join("label_csv");
    for set in ["usps", "mnistm"] {
        let text = std::fs::read_to_string(repo.join(format!("fixtures/digits/{set}/val.csv"))).unwrap();
        let head: String = text.lines().take(12).map(|l| format!("{l}\n")).collect();
        put(&dir, &format!("seed-fixture-{set}-val.csv"), head.as_bytes());
    }
    let csvs: &[(&str, &[u8])] = &[
        ("bom-crlf", b"\xEF\xBB\xBFimage_name,label\r\n a.png , 3\r\nb.png,0\r\n\r\n"),
        ("quoted", b"\"image_name\",\"label\"\n\"a b.png\",\"7\"\n\"c\"\"d.png\",1\n"),
        ("upper-header", b"IMAGE_NAME,Label\nx.jpg,9\n"),
        ("header-only", b"image_name,label\n"),
        ("bad-rows", b"image_name,label\na.png,1,2\n../a.png,3\n"),
        ("blank-lines", b"\n\n,\nimage_name,label\n\n,,\n00001.png,4\n"),
    ];
    for (name, bytes) in csvs {
        put(&dir, &format!("seed-{name}.csv"), bytes);
    }

    // image_decode
    let dir = corpus.join("image_decode");
    for (set, file) in [("usps", "00000.png"), ("mnistm", "00000.png")] {
        put(&dir, &format!("seed-fixture-{set}-{file}"), &std::fs::read(repo.join(format!("fixtures/digits/{set}/data/{file}"))).unwrap());
    }
    let rgb = RgbImage::from_fn(28, 28, |x, y| Rgb([(x * 9) as u8, (y * 9) as u8, ((x + y) * 4) as u8]));
    let rgb = DynamicImage::ImageRgb8(rgb);
    let grey = DynamicImage::ImageLuma8(rgb.to_luma8());
    put(&dir, "seed-rgb.jpg", &image_bytes(&rgb, ImageFormat::Jpeg));
    put(&dir, "seed-grey.jpg", &image_bytes(&grey, ImageFormat::Jpeg));
    put(&dir, "seed-rgb.bmp", &image_bytes(&rgb, ImageFormat::Bmp));
    put(&dir, "seed-grey.bmp", &image_bytes(&grey, ImageFormat::Bmp));
    put(&dir, "seed-rgba.png", &image_bytes(&DynamicImage::ImageRgba8(rgb.to_rgba8()), ImageFormat::Png));
    put(&dir, "seed-rgb16.png", &image_bytes(&DynamicImage::ImageRgb16(rgb.to_rgb16()), ImageFormat::Png));
    put(&dir, "seed-odd-size.png", &image_bytes(&DynamicImage::ImageRgb8(rgb.to_rgb8().sub_image_owned()), ImageFormat::Png));
}

trait SubImage {
    fn sub_image_owned(&self) -> RgbImage;
}

impl SubImage for RgbImage {
    /// A 7x3 crop: an odd, non-square size that the pipeline must resize.
    fn sub_image_owned(&self) -> RgbImage {
        image::imageops::crop_imm(self, 2, 5, 7, 3).to_image()
    }
}
