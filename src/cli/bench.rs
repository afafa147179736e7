//! `tl bench conv`: GFLOP/s of Conv2d forward and backward at 3×3, padding-1, stride-1 shapes of
//! VGG16 (conv1_2, conv2_2, conv3_1, conv4_2, conv5_1) and ResNet-18 (layer1, layer4). A forward
//! pass costs `2·N·C_out·OH·OW·C_in·k²` flops; a backward pass twice that (`∂W` and `∂x`). These
//! are the flops of the direct convolution, whatever the kernel (im2col + GEMM or Winograd), so
//! GFLOP/s compare kernels. Each pass runs `--warmup` times untimed, then `--iters` times; the
//! median time is reported. `TL_CONV=im2col` (or `winograd`) forces one kernel.

use std::time::Instant;

use anyhow::Result;
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tl::nn::{Context, Conv2d, Layer};

/// Arguments of `tl bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    job: Job,
}

#[derive(clap::Subcommand, Debug)]
enum Job {
    /// Conv2d forward and backward at VGG16 and ResNet-18 shapes.
    Conv(ConvArgs),
}

#[derive(clap::Args, Debug)]
struct ConvArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed repetitions of each pass.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed repetitions before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Only these shapes (comma-separated names, e.g. `conv3_1,layer4`; default: all).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<String>,
}

/// A convolution shape: name, input side, input channels, output channels (3×3, padding 1).
const SHAPES: [(&str, usize, usize, usize); 7] = [
    ("conv1_2", 224, 64, 64),
    ("conv2_2", 112, 128, 128),
    ("conv3_1", 56, 128, 256),
    ("conv4_2", 28, 512, 512),
    ("conv5_1", 14, 512, 512),
    ("layer1", 56, 64, 64),
    ("layer4", 7, 512, 512),
];

pub fn run(args: Args) -> Result<()> {
    match args.job {
        Job::Conv(a) => conv(a),
    }
}

fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn conv(a: ConvArgs) -> Result<()> {
    if a.batch == 0 {
        anyhow::bail!("--batch: must be at least 1");
    }
    if a.iters == 0 {
        anyhow::bail!("--iters: must be at least 1");
    }
    if let Some(bad) = a
        .layers
        .iter()
        .find(|l| !SHAPES.iter().any(|s| s.0 == l.as_str()))
    {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.0).collect();
        anyhow::bail!(
            "--layers: unknown shape {bad:?} (known: {})",
            names.join(", ")
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    if !a.json {
        println!(
            "{:<8} {:>5} {:>16} {:>8} {:>10} {:>9}",
            "layer", "batch", "shape", "pass", "median ms", "GFLOP/s"
        );
    }
    for (name, side, c_in, c_out) in SHAPES {
        if !a.layers.is_empty() && !a.layers.iter().any(|l| l == name) {
            continue;
        }
        let mut layer = Conv2d::new(c_in, c_out, 3, 1, 1, true, &mut rng);
        let x = random(&[a.batch, c_in, side, side], &mut rng);
        let g = random(&[a.batch, c_out, side, side], &mut rng);
        let flops = 2.0 * (a.batch * c_out * side * side * c_in * 9) as f64;
        let mut fwd = Vec::new();
        let mut bwd = Vec::new();
        for i in 0..a.warmup + a.iters {
            let xi = x.clone();
            let t = Instant::now();
            let y = layer.forward(xi, &mut Context::eval(&mut rng));
            let f = t.elapsed().as_secs_f64();
            std::hint::black_box(y);

            let mut ctx = Context::train(&mut rng);
            ctx.input_grad = true;
            let y = layer.forward(x.clone(), &mut ctx);
            drop(y);
            layer.weight.zero_grad();
            if let Some(b) = &mut layer.bias {
                b.zero_grad();
            }
            let gi = g.clone();
            let t = Instant::now();
            let dx = layer.backward(gi);
            let b = t.elapsed().as_secs_f64();
            std::hint::black_box(dx);
            if i >= a.warmup {
                fwd.push(f);
                bwd.push(b);
            }
        }
        let shape = format!("{side}x{side}x{c_in}->{c_out}");
        for (pass, times, work) in [("forward", fwd, flops), ("backward", bwd, 2.0 * flops)] {
            let t = median(times);
            let gflops = work / t / 1e9;
            if a.json {
                println!(
                    "{{\"layer\":\"{name}\",\"side\":{side},\"c_in\":{c_in},\"c_out\":{c_out},\"batch\":{},\"pass\":\"{pass}\",\"median_ms\":{:.3},\"gflops\":{:.1}}}",
                    a.batch,
                    t * 1e3,
                    gflops
                );
            } else {
                println!(
                    "{name:<8} {:>5} {shape:>16} {pass:>8} {:>10.2} {gflops:>9.1}",
                    a.batch,
                    t * 1e3
                );
            }
        }
    }
    Ok(())
}
