//! Models: VGG16 and ResNet-18 as flat lists of named units (torchvision's module names), each
//! tagged with its stage (`conv1` … `conv5`, `pool5`/`pool`, `fc6`, `fc7`, `fc8`/`fc`, `head`).
//! Stages drive freezing (`freeze_until`), cutting (`cut`) and feature extraction (`forward_to`).

pub mod head;
pub mod init;
pub mod open;
pub mod resnet18;
pub mod synthetic;
pub mod vgg16;

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD};
use rand::RngCore;

pub use init::Init;
pub use open::open;

use crate::error::{Error, Result};
use crate::nn::{Context, Layer, Param, ParamKind, Sequential};
use crate::weights::{load_into, save_atomic, FileImage, LoadReport, WeightFile};

/// ImageNet normalisation mean (RGB).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation standard deviation (RGB).
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One top-level piece of a model: torchvision module name, stage, layer.
pub struct Unit {
    pub name: String,
    pub stage: String,
    pub layer: Box<dyn Layer>,
}

impl Unit {
    /// A unit.
    pub fn new(name: impl Into<String>, stage: &str, layer: Box<dyn Layer>) -> Self {
        Unit {
            name: name.into(),
            stage: stage.to_string(),
            layer,
        }
    }
}

/// A supported architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Vgg16,
    Resnet18,
}

impl Arch {
    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Vgg16 => "vgg16",
            Arch::Resnet18 => "resnet18",
        }
    }

    /// Parses `vgg16` or `resnet18`.
    ///
    /// # Errors
    /// [`Error::Config`] for any other name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "vgg16" => Ok(Arch::Vgg16),
            "resnet18" => Ok(Arch::Resnet18),
            _ => Err(Error::config(
                "--model",
                format!("unknown architecture {name:?}; known: vgg16, resnet18"),
            )),
        }
    }

    /// The stage after which a new head attaches by default: `fc7` (VGG16), `pool` (ResNet-18).
    pub fn default_cut(self) -> &'static str {
        match self {
            Arch::Vgg16 => "fc7",
            Arch::Resnet18 => "pool",
        }
    }

    /// The stage whose output `tl features` returns by default.
    pub fn default_feature_stage(self) -> &'static str {
        self.default_cut()
    }

    fn stages(self) -> &'static [&'static str] {
        match self {
            Arch::Vgg16 => &vgg16::STAGES,
            Arch::Resnet18 => &resnet18::STAGES,
        }
    }

    fn canonical_stage(self, name: &str) -> Option<&'static str> {
        let name = name.to_ascii_lowercase();
        let alias = match (self, name.as_str()) {
            (_, "layer1") => "conv2",
            (_, "layer2") => "conv3",
            (_, "layer3") => "conv4",
            (_, "layer4") => "conv5",
            (Arch::Vgg16, "pool") => "pool5",
            (Arch::Vgg16, "fc") => "fc8",
            (Arch::Resnet18, "fc8") => "fc",
            (_, other) => other,
        };
        self.stages().iter().copied().find(|s| *s == alias)
    }
}

/// One row of a model summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub stage: String,
    pub name: String,
    pub layer: String,
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub trainable: usize,
}

/// A VGG16 or ResNet-18 graph, possibly cut and given a new head.
pub struct Model {
    arch: Arch,
    net: Sequential,
    stages: Vec<String>,
    cut: Option<String>,
    head: Option<Vec<usize>>,
    dropout: f32,
    classes: Vec<String>,
    dropped: Vec<String>,
    input_size: u32,
}

impl Model {
    /// The full torchvision graph with `classes` outputs.
    pub fn new(arch: Arch, classes: usize, mut init: Init<'_>) -> Self {
        let units = match arch {
            Arch::Vgg16 => vgg16::units(classes, &mut init),
            Arch::Resnet18 => resnet18::units(classes, &mut init),
        };
        let stages = units.iter().map(|u| u.stage.clone()).collect();
        Model {
            arch,
            net: Sequential::named(units.into_iter().map(|u| (u.name, u.layer)).collect()),
            stages,
            cut: None,
            head: None,
            dropout: 0.5,
            classes: (0..classes).map(|i| i.to_string()).collect(),
            dropped: Vec::new(),
            input_size: 224,
        }
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Class names, in output order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Names the outputs.
    ///
    /// # Errors
    /// [`Error::Config`] when the count differs from the number of outputs.
    pub fn set_classes(&mut self, classes: Vec<String>) -> Result<()> {
        if classes.len() != self.num_outputs() {
            return Err(Error::config(
                "classes",
                format!("{} names for {} outputs", classes.len(), self.num_outputs()),
            ));
        }
        self.classes = classes;
        Ok(())
    }

    /// The side of the square input the model was trained at (224 unless fine-tuned with another
    /// `--image-size`); prediction preprocesses to it.
    pub fn input_size(&self) -> u32 {
        self.input_size
    }

    /// Sets the input side recorded in checkpoints.
    pub fn set_input_size(&mut self, size: u32) {
        self.input_size = size;
    }

    /// Number of outputs of the last layer.
    pub fn num_outputs(&self) -> usize {
        *self
            .net
            .output_shape(&[1, 3, 224, 224])
            .last()
            .expect("2-D output")
    }

    /// The stage the head attaches after, when the model was cut.
    pub fn cut_stage(&self) -> Option<&str> {
        self.cut.as_deref()
    }

    /// The hidden widths of the new head, when there is one.
    pub fn head_spec(&self) -> Option<&[usize]> {
        self.head.as_deref()
    }

    /// The head's dropout probability.
    pub fn dropout(&self) -> f32 {
        self.dropout
    }

    /// The stages present, in order.
    pub fn stage_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for s in &self.stages {
            if names.last() != Some(&s.as_str()) {
                names.push(s);
            }
        }
        names
    }

    /// The canonical name of stage `name` (aliases such as `layer4` accepted).
    ///
    /// # Errors
    /// [`Error::Config`] naming `flag` and listing the valid stages when `name` is not one.
    pub fn resolve_stage(&self, flag: &str, name: &str) -> Result<String> {
        let present = self.stage_names();
        let canon = if name.eq_ignore_ascii_case("head") {
            Some("head")
        } else {
            self.arch.canonical_stage(name)
        };
        match canon.filter(|c| present.contains(c)) {
            Some(c) => Ok(c.to_string()),
            None => Err(Error::config(
                flag,
                format!(
                    "unknown stage {name:?} for {}; valid stages: {}",
                    self.arch.name(),
                    present.join(", ")
                ),
            )),
        }
    }

    fn stage_range(&self, stage: &str) -> (usize, usize) {
        let first = self
            .stages
            .iter()
            .position(|s| s == stage)
            .expect("resolved stage");
        let last = self
            .stages
            .iter()
            .rposition(|s| s == stage)
            .expect("resolved stage");
        (first, last + 1)
    }

    /// Drops every layer after `cut` and attaches a new head (`hidden` widths, then `classes`
    /// outputs), initialised as `nn.Linear` from `rng`.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown stage or a stage with no flat output (a conv stage).
    pub fn attach_head(
        &mut self,
        cut: &str,
        hidden: &[usize],
        classes: Vec<String>,
        dropout: f32,
        rng: &mut dyn RngCore,
    ) -> Result<()> {
        let cut = self.resolve_stage("--cut", cut)?;
        let end = self.stage_range(&cut).1;
        let shape = {
            let mut s = vec![1, 3, 224, 224];
            for (_, l) in self.net.layers().take(end) {
                s = l.output_shape(&s);
            }
            s
        };
        if shape.len() != 2 {
            return Err(Error::config(
                "--cut",
                format!(
                    "stage {cut} gives a spatial map {shape:?}; cut at a flat stage ({})",
                    self.flat_stages().join(", ")
                ),
            ));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::config(
                "--dropout",
                format!("{dropout} is not in [0, 1)"),
            ));
        }
        if classes.is_empty() {
            return Err(Error::config("classes", "a head needs at least one class"));
        }
        self.dropped
            .extend(self.net.layers().skip(end).map(|(n, _)| n.to_string()));
        self.net.truncate(end);
        self.stages.truncate(end);
        for (i, layer) in head::build_head(shape[1], hidden, classes.len(), dropout, rng)
            .into_iter()
            .enumerate()
        {
            self.net.push_named(format!("head.{i}"), layer);
            self.stages.push("head".into());
        }
        self.cut = Some(cut);
        self.head = Some(hidden.to_vec());
        self.dropout = dropout;
        self.classes = classes;
        Ok(())
    }

    fn flat_stages(&self) -> Vec<&str> {
        self.stage_names()
            .into_iter()
            .filter(|s| !s.starts_with("conv") && *s != "head")
            .collect()
    }

    /// Freezes every stage before `stage` and makes `stage` and everything after it trainable.
    /// Frozen BatchNorm layers then run with their running statistics.
    ///
    /// # Errors
    /// [`Error::Config`] naming `--freeze-until` and listing the valid stages.
    pub fn freeze_until(&mut self, stage: &str) -> Result<()> {
        let stage = self.resolve_stage("--freeze-until", stage)?;
        let start = self.stage_range(&stage).0;
        for (i, (name, layer)) in self.net.layers_mut().enumerate() {
            let _ = name;
            layer.visit_mut("", &mut |_, p| p.set_trainable(i >= start));
        }
        Ok(())
    }

    /// Sets the trainable flag of every parameter whose name starts with `prefix` (a dotted
    /// prefix: `layer4` matches `layer4.0.conv1.weight`, not `layer40`). Returns how many
    /// tensors matched.
    ///
    /// # Errors
    /// [`Error::Config`] when no parameter matches.
    pub fn set_trainable(&mut self, prefix: &str, trainable: bool) -> Result<usize> {
        let mut n = 0;
        self.net.visit_mut("", &mut |name, p| {
            if p.kind() != ParamKind::Buffer
                && (name == prefix || name.starts_with(&format!("{prefix}.")))
            {
                p.set_trainable(trainable);
                n += 1;
            }
        });
        if n == 0 {
            return Err(Error::config(
                "prefix",
                format!("no parameter name starts with {prefix:?}"),
            ));
        }
        Ok(n)
    }

    /// Sets the drop probability of every Dropout layer, the backbone's included (0 turns them
    /// off, as for a deterministic training run).
    ///
    /// # Errors
    /// [`Error::Config`] naming `--dropout` unless `0 ≤ p < 1`.
    pub fn set_dropout(&mut self, p: f32) -> Result<()> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config("--dropout", format!("{p} is not in [0, 1)")));
        }
        self.net.set_dropout(p);
        Ok(())
    }

    /// Sets the drop probability of the new head's Dropout layers (the backbone's are kept).
    ///
    /// # Errors
    /// [`Error::Config`] naming `--dropout` unless `0 ≤ p < 1`.
    pub fn set_dropout_of_head(&mut self, p: f32) -> Result<()> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config("--dropout", format!("{p} is not in [0, 1)")));
        }
        for (name, layer) in self.net.layers_mut() {
            if name.starts_with("head.") {
                layer.set_dropout(p);
            }
        }
        self.dropout = p;
        Ok(())
    }

    /// `(total, trainable)` parameter counts (buffers excluded).
    pub fn param_counts(&self) -> (usize, usize) {
        let (mut total, mut trainable) = (0, 0);
        self.net.visit("", &mut |_, p| {
            if p.kind() != ParamKind::Buffer {
                total += p.len();
                if p.trainable() {
                    trainable += p.len();
                }
            }
        });
        (total, trainable)
    }

    /// The layer tree (for optimizers and inspection).
    pub fn net(&self) -> &Sequential {
        &self.net
    }

    /// The layer tree, mutably.
    pub fn net_mut(&mut self) -> &mut Sequential {
        &mut self.net
    }

    /// Calls `f` with each parameter's and buffer's torchvision name.
    pub fn visit<'a>(&'a self, f: &mut dyn FnMut(&str, &'a Param)) {
        self.net.visit("", f);
    }

    /// The full forward pass: `[N, 3, H, W]` → logits `[N, classes]`.
    pub fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let n = self.net.len();
        self.net.forward_range(x, ctx, 0..n)
    }

    /// The output of `stage` (canonical name, see [`Model::resolve_stage`]).
    pub fn forward_to(
        &mut self,
        x: ArrayD<f32>,
        stage: &str,
        ctx: &mut Context<'_>,
    ) -> ArrayD<f32> {
        let end = self.stage_range(stage).1;
        self.net.forward_range(x, ctx, 0..end)
    }

    /// Number of leading units with no trainable parameter: the frozen prefix, whose output does
    /// not change during training (see [`Model::prefix_is_deterministic`]).
    pub fn frozen_prefix(&self) -> usize {
        self.net
            .layers()
            .take_while(|(_, l)| !l.has_trainable())
            .count()
    }

    /// True when the first `units` units give the same output in train and eval mode (no
    /// Dropout; their BatchNorm layers are frozen, so they use running statistics), so their
    /// output can be computed once and cached.
    pub fn prefix_is_deterministic(&self, units: usize) -> bool {
        self.net
            .layers()
            .take(units)
            .all(|(_, l)| !l.is_stochastic() && !l.has_trainable())
    }

    /// Runs units `range` only: `x` is the output of unit `range.start - 1` (or the image batch).
    pub fn forward_range(
        &mut self,
        x: ArrayD<f32>,
        range: std::ops::Range<usize>,
        ctx: &mut Context<'_>,
    ) -> ArrayD<f32> {
        self.net.forward_range(x, ctx, range)
    }

    /// Number of top-level units.
    pub fn len(&self) -> usize {
        self.net.len()
    }

    /// True for a model without units.
    pub fn is_empty(&self) -> bool {
        self.net.is_empty()
    }

    /// The stage of each unit, in order.
    pub fn unit_stages(&self) -> &[String] {
        &self.stages
    }

    /// Backward through the whole model from `∂L/∂logits`.
    pub fn backward(&mut self, grad: ArrayD<f32>) {
        self.net.backward(grad);
    }

    /// One row per layer (containers of blocks expanded one level), for an input of
    /// `[batch, 3, size, size]`.
    pub fn summary(&self, batch: usize, size: usize) -> Vec<SummaryRow> {
        let mut rows = Vec::new();
        let mut shape = vec![batch, 3, size, size];
        for ((name, layer), stage) in self.net.layers().zip(&self.stages) {
            let children = layer.children();
            let expand = layer.describe() == "Sequential" && !children.is_empty();
            let parts: Vec<(String, &dyn Layer)> = if expand {
                children
                    .into_iter()
                    .map(|(c, l)| (format!("{name}.{c}"), l))
                    .collect()
            } else {
                vec![(name.to_string(), layer)]
            };
            for (full, l) in parts {
                shape = l.output_shape(&shape);
                let (mut params, mut trainable) = (0, 0);
                l.visit("", &mut |_, p| {
                    if p.kind() != ParamKind::Buffer {
                        params += p.len();
                        if p.trainable() {
                            trainable += p.len();
                        }
                    }
                });
                rows.push(SummaryRow {
                    stage: stage.clone(),
                    name: full,
                    layer: l.describe(),
                    output_shape: shape.clone(),
                    params,
                    trainable,
                });
            }
        }
        rows
    }

    /// Loads weights strictly: every parameter and buffer from the file (a new head excepted),
    /// every file tensor used (tensors of layers this model cut off excepted).
    ///
    /// # Errors
    /// [`Error::Weights`] listing every problem by name.
    pub fn load_weights(&mut self, file: &WeightFile) -> Result<LoadReport> {
        let dropped = self.dropped.clone();
        let has_head = self.head.is_some();
        load_into(
            &mut self.net,
            file,
            &|name| has_head && name.starts_with("head."),
            &|name| dropped.iter().any(|d| name.starts_with(&format!("{d}."))),
        )
    }

    /// The checkpoint metadata of the contract (`training` is a JSON summary).
    pub fn checkpoint_metadata(&self, training: &str) -> HashMap<String, String> {
        let json = |v: &[f32]| serde_json::to_string(v).expect("floats serialise");
        let mut m = HashMap::new();
        m.insert("tl.format".into(), "1".into());
        m.insert("arch".into(), self.arch.name().into());
        m.insert("cut".into(), self.cut.clone().unwrap_or_default());
        m.insert(
            "head".into(),
            self.head
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        );
        m.insert("dropout".into(), self.dropout.to_string());
        m.insert(
            "classes".into(),
            serde_json::to_string(&self.classes).expect("strings serialise"),
        );
        m.insert("mean".into(), json(&MEAN));
        m.insert("std".into(), json(&STD));
        m.insert("input_size".into(), self.input_size.to_string());
        m.insert("training".into(), training.into());
        m
    }

    /// Writes every parameter and buffer, with the contract's metadata, atomically.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save_checkpoint(&self, path: &Path, training: &str) -> Result<()> {
        save_atomic(
            path,
            self.checkpoint_tensors(),
            self.checkpoint_metadata(training),
        )
    }

    /// What [`Model::save_checkpoint`] would write now, laid out in `image` (in its memory when
    /// it held an earlier checkpoint of this model), to be written later or on another thread
    /// with [`FileImage::write_atomic`].
    pub fn checkpoint_into(&self, training: &str, image: &mut FileImage) {
        image.fill(
            &self.checkpoint_tensors(),
            &self.checkpoint_metadata(training),
        );
    }

    /// Every parameter and buffer by its dotted name, as a checkpoint holds them.
    fn checkpoint_tensors(&self) -> Vec<(String, ArrayViewD<'_, f32>)> {
        let mut tensors = Vec::new();
        self.net.visit("", &mut |name, p| {
            tensors.push((name.to_string(), p.value()))
        });
        tensors
    }

    /// Rebuilds a model from a tl checkpoint (architecture, cut, head and classes from its
    /// metadata) and loads it strictly.
    ///
    /// # Errors
    /// [`Error::Format`] when the metadata is missing or malformed; [`Error::Weights`] when the
    /// tensors do not fit.
    pub fn from_checkpoint(file: &WeightFile) -> Result<Self> {
        let meta = file.metadata();
        let path = file.path();
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| Error::format(path, format!("checkpoint metadata has no {k:?}")))
        };
        if get("tl.format")? != "1" {
            return Err(Error::format(
                path,
                "unsupported tl.format (expected \"1\")",
            ));
        }
        let arch = Arch::parse(get("arch")?).map_err(|e| Error::format(path, e.to_string()))?;
        let classes: Vec<String> = serde_json::from_str(get("classes")?).map_err(|e| {
            Error::format(
                path,
                format!("metadata \"classes\" is not a JSON list: {e}"),
            )
        })?;
        let cut = get("cut")?.clone();
        let mut model = if cut.is_empty() {
            let mut m = Model::new(arch, classes.len(), Init::Zeros);
            m.set_classes(classes)
                .map_err(|e| Error::format(path, e.to_string()))?;
            m
        } else {
            let hidden =
                head::parse_head(get("head")?).map_err(|e| Error::format(path, e.to_string()))?;
            let dropout: f32 = get("dropout")?
                .parse()
                .map_err(|_| Error::format(path, "metadata \"dropout\" is not a number"))?;
            let mut m = Model::new(arch, 1, Init::Zeros);
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            m.attach_head(&cut, &hidden, classes, dropout, &mut rng)
                .map_err(|e| Error::format(path, e.to_string()))?;
            m
        };
        if let Some(size) = meta.get("input_size") {
            model.input_size = size.parse().map_err(|_| {
                Error::format(path, "metadata \"input_size\" is not a whole number")
            })?;
        }
        load_into(&mut model.net, file, &|_| false, &|_| false)?;
        Ok(model)
    }

    /// True when `file` is a tl checkpoint (has `tl.format` metadata).
    pub fn is_checkpoint(file: &WeightFile) -> bool {
        file.metadata().contains_key("tl.format")
    }
}
