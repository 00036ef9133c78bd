//! The parameter store: one list of named parameters (Hugging Face names) that loading,
//! saving, gradients and optimizer groups all index by [`ParamId`].

use alloc::string::String;
use alloc::vec::Vec;

use crate::Error;
use crate::backend::Backend;
use crate::kernels::PackedWeight;
use crate::precision::Precision;
use crate::random::RandomStream;

/// Index of a parameter in a [`ParamLayout`] (and in every [`ParamStore`] built from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(usize);

impl ParamId {
    /// Position of the parameter in its layout.
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a parameter is initialised for training from scratch (microsoft/DeBERTa
/// `NNModule.init_weights`: normal weights, zero biases, unit LayerNorm scales).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `N(0, std²)`.
    Normal(f32),
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element the same value.
    Constant(f32),
}

/// Name, shape and initialisation of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The Hugging Face state-dict name.
    pub name: String,
    /// The PyTorch shape (`[out, in]` for Linear weights).
    pub shape: Vec<usize>,
    /// Initialisation from scratch.
    pub init: Init,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered list of a model's parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    /// The `[output, input]` weights of `Linear` layers, which
    /// [`ParamStore::pack`] converts for reduced-precision products.
    linear_weights: Vec<ParamId>,
}

impl ParamLayout {
    /// An empty layout.
    pub fn new() -> Self {
        ParamLayout::default()
    }

    /// Registers a parameter and returns its id.
    pub fn add(&mut self, name: String, shape: &[usize], init: Init) -> ParamId {
        self.specs.push(ParamSpec {
            name,
            shape: shape.to_vec(),
            init,
        });
        ParamId(self.specs.len() - 1)
    }

    /// Marks a registered `[output, input]` parameter as the weight of a `Linear` layer (a
    /// product weight [`ParamStore::pack`] converts).
    pub fn mark_linear_weight(&mut self, id: ParamId) {
        self.linear_weights.push(id);
    }

    /// The weights marked by [`ParamLayout::mark_linear_weight`], in registration order.
    pub fn linear_weights(&self) -> &[ParamId] {
        &self.linear_weights
    }

    /// All parameters, in id order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The spec of one parameter.
    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }

    /// Changes how a registered parameter is initialised.
    pub fn set_init(&mut self, id: ParamId, init: Init) {
        self.specs[id.0].init = init;
    }

    /// The id of the parameter with this name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.specs.iter().position(|s| s.name == name).map(ParamId)
    }

    /// Iterates over `(id, spec)`.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &ParamSpec)> {
        self.specs.iter().enumerate().map(|(i, s)| (ParamId(i), s))
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Builds a store by producing each tensor from its spec, in id order.
    pub fn build<T>(
        &self,
        mut make: impl FnMut(ParamId, &ParamSpec) -> Result<T, Error>,
    ) -> Result<ParamStore<T>, Error> {
        let tensors = self
            .iter()
            .map(|(id, spec)| make(id, spec))
            .collect::<Result<Vec<T>, Error>>()?;
        let packed = tensors.iter().map(|_| None).collect();
        Ok(ParamStore {
            tensors,
            packed,
            products: Precision::F32,
        })
    }

    /// A store of zero tensors (gradient buffers).
    pub fn zeros<B: Backend>(&self, backend: &B) -> Result<ParamStore<B::Tensor>, Error> {
        self.build(|_, spec| backend.zeros(spec.numel()))
    }

    /// A store initialised as for pretraining from scratch. Each parameter draws from a stream
    /// keyed by a hash of its *name*, so the values depend on neither the backend nor the order
    /// of registration (a model initialised alone or inside a pair gets the same weights).
    pub fn initialise<B: Backend>(
        &self,
        backend: &B,
        seed: u64,
    ) -> Result<ParamStore<B::Tensor>, Error> {
        self.build(|_, spec| {
            let n = spec.numel();
            let values: Vec<f32> = match spec.init {
                Init::Zeros => alloc::vec![0.0; n],
                Init::Ones => alloc::vec![1.0; n],
                Init::Constant(value) => alloc::vec![value; n],

                Init::Normal(std) => {
                    let rng = RandomStream {
                        seed,
                        step: 0,
                        stream: name_hash(&spec.name),
                    };
                    (0..n as u64).map(|i| rng.normal(i) * std).collect()
                }
            };
            backend.upload(&values)
        })
    }
}

/// FNV-1a over the bytes of a parameter name.
fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One tensor per parameter of a [`ParamLayout`], indexed by [`ParamId`]: weights, gradients
/// and optimizer moments are all stores of the same layout.
#[derive(Debug, Clone, PartialEq)]
///
/// A store of weights may also hold reduced-precision copies of its `Linear` weights
/// ([`ParamStore::pack`]), which `Linear::forward` multiplies instead of the f32 tensors. Any
/// mutable access to a parameter drops its copy, so a copy never outlives the values it was
/// made from. A weight without a copy is multiplied at the store's
/// [`ParamStore::products`] format (f32 unless set: formats without a packed layout, such as
/// wgpu's f16, convert the f32 weight as the kernel loads it).
pub struct ParamStore<T> {
    tensors: Vec<T>,
    packed: Vec<Option<PackedWeight>>,
    products: Precision,
}

impl<T> ParamStore<T> {
    /// The tensor of a parameter.
    pub fn get(&self, id: ParamId) -> &T {
        &self.tensors[id.0]
    }

    /// The tensor of a parameter, mutably (drops its packed copy).
    pub fn get_mut(&mut self, id: ParamId) -> &mut T {
        self.packed[id.0] = None;
        &mut self.tensors[id.0]
    }

    /// The reduced-precision copy of a parameter made by [`ParamStore::pack`], if any.
    pub fn packed(&self, id: ParamId) -> Option<&PackedWeight> {
        self.packed[id.0].as_ref()
    }

    /// The number format of the `Linear` products of weights without a packed copy
    /// ([`Backend::matmul_reduced`]; [`Precision::F32`] unless set).
    pub fn products(&self) -> Precision {
        self.products
    }

    /// Multiplies the `Linear` weights without a packed copy at `products` (a format
    /// [`Backend::matmul_reduced`] takes): how a trainer asks for f16 products on wgpu.
    pub fn set_products(&mut self, products: Precision) {
        self.products = products;
    }

    /// Drops every packed copy (the products go back to f32).
    pub fn unpack(&mut self) {
        self.packed.iter_mut().for_each(|p| *p = None);
    }

    /// Converts the `Linear` weights of `layout` that have no copy at `precision` (new
    /// stores, and weights written since their copy was made: the optimizer's updates), and
    /// keeps the others: what a training step calls before its passes.
    pub fn pack_missing<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        layout: &ParamLayout,
        precision: Precision,
    ) -> Result<(), Error> {
        self.convert(backend, layout, precision, false)
    }

    /// Converts every `Linear` weight of `layout` once for products at `precision` (through
    /// [`Backend::pack_weight`]) for inference: at [`Precision::F32`] only where the backend's
    /// packed f32 product is the faster one ([`Backend::packs_f32_weights`]). Each weight's
    /// f32 tensor is freed as soon as its copy exists (the products read only the copies), so
    /// that memory holds one format of the weights rather than two: run first whatever reads
    /// the f32 weights themselves (the relative position projections,
    /// [`Deberta::relative_embeddings`](crate::model::Deberta::relative_embeddings)). A freed
    /// weight reads as an empty tensor: using it is a typed shape error, never stale numbers.
    /// Where the backend makes no copies at this precision, nothing is freed.
    pub fn pack<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        layout: &ParamLayout,
        precision: Precision,
    ) -> Result<(), Error> {
        self.unpack();
        if precision == Precision::F32 && !backend.packs_f32_weights() {
            return Ok(());
        }
        self.convert(backend, layout, precision, true)
    }

    /// Packs the `Linear` weights without a copy at `precision`; with `release`, frees each
    /// f32 tensor once its copy exists.
    fn convert<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        layout: &ParamLayout,
        precision: Precision,
        release: bool,
    ) -> Result<(), Error> {
        let products = precision.products();
        for &id in layout.linear_weights() {
            if self.packed[id.0]
                .as_ref()
                .is_some_and(|p| p.precision() == products)
            {
                continue;
            }
            let [output, input] = layout.spec(id).shape[..] else {
                return Err(Error::ShapeMismatch {
                    what: "dimensions of a Linear weight",
                    expected: 2,
                    found: layout.spec(id).shape.len(),
                });
            };
            self.packed[id.0] =
                Some(backend.pack_weight(&self.tensors[id.0], output, input, products)?);
            if release {
                self.tensors[id.0] = backend.zeros(0)?;
            }
        }
        Ok(())
    }

    /// Two different parameters' tensors, both mutably (a LayerNorm's γ and β gradients).
    pub fn pair_mut(&mut self, a: ParamId, b: ParamId) -> Result<(&mut T, &mut T), Error> {
        if a.0 == b.0 || a.0.max(b.0) >= self.tensors.len() {
            return Err(Error::ShapeMismatch {
                what: "two distinct parameters of this store",
                expected: self.tensors.len(),
                found: a.0.max(b.0),
            });
        }
        self.packed[a.0] = None;
        self.packed[b.0] = None;
        if a.0 < b.0 {
            let (lo, hi) = self.tensors.split_at_mut(b.0);
            Ok((&mut lo[a.0], &mut hi[0]))
        } else {
            let (lo, hi) = self.tensors.split_at_mut(a.0);
            Ok((&mut hi[0], &mut lo[b.0]))
        }
    }

    /// Distinct parameters' tensors, all mutably, in the order of `ids` (drops their packed
    /// copies): an optimizer's update of all of its parameters at once.
    pub fn many_mut(&mut self, ids: &[ParamId]) -> Result<Vec<&mut T>, Error> {
        let mut slots: Vec<Option<&mut T>> = self.tensors.iter_mut().map(Some).collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let tensor = slots.get_mut(id.0).and_then(Option::take);
            out.push(tensor.ok_or(Error::ShapeMismatch {
                what: "distinct parameters of this store",
                expected: slots.len(),
                found: id.0,
            })?);
            self.packed[id.0] = None;
        }
        Ok(out)
    }

    /// Replaces the tensor of a parameter (drops its packed copy).
    pub fn set(&mut self, id: ParamId, tensor: T) {
        self.packed[id.0] = None;
        self.tensors[id.0] = tensor;
    }

    /// Iterates over the tensors mutably, in id order (drops every packed copy).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.packed.iter_mut().for_each(|p| *p = None);
        self.tensors.iter_mut()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Iterates over the tensors in id order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.tensors.iter()
    }
}
