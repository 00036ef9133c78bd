// Element-wise and broadcast kernels: fill, add, bias, row scaling, activations and their
// derivatives, the sequence-row broadcast and its backward. One thread per element.

const ELEMENTWISE_WG: u32 = 256u;

// Activation codes (mirrored by `Activation` → `activation_code` in Rust).
const ACT_GELU: u32 = 0u;
const ACT_GELU_TANH: u32 = 1u;
const ACT_RELU: u32 = 2u;
const ACT_TANH: u32 = 3u;
const ACT_SILU: u32 = 4u;
const ACT_SIGMOID: u32 = 5u;

struct Params {
    n: u32,
    cols: u32,
    len: u32,
    row: u32,
    act: u32,
    accumulate: u32,
    alpha: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The written operand.
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
// Read operands (which ones an entry point uses is listed next to it in Rust).
@group(0) @binding(2) var<storage, read> src0: array<f32>;
@group(0) @binding(3) var<storage, read> src1: array<f32>;

fn element_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * ELEMENTWISE_WG + lid;
}

// ----- erf (FreeBSD s_erff.c, as in libm's `erff`) ---------------------------------------

fn erfc_mid(x: f32) -> f32 {
    // |x| in [0.84375, 1.25)
    let s = abs(x) - 1.0;
    let p = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01
        + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
    let q = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02
        + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
    return 1.0 - 8.4506291151e-01 - p / q;
}

fn erfc_tail(ix: u32, x_in: f32) -> f32 {
    if (ix < 0x3fa00000u) {
        return erfc_mid(x_in);
    }
    let x = abs(x_in);
    let s = 1.0 / (x * x);
    var r: f32;
    var big_s: f32;
    if (ix < 0x4036db6du) {
        r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01
            + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
        big_s = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02
            + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02
            + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
    } else {
        r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02
            + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
        big_s = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03
            + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
    }
    let z = bitcast<f32>(bitcast<u32>(x) & 0xffffe000u);
    return exp(-z * z - 0.5625) * exp((z - x) * (z + x) + r / big_s) / x;
}

fn erf(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let negative = (bits >> 31u) != 0u;
    let ix = bits & 0x7fffffffu;
    if (ix >= 0x7f800000u) {
        // NaN stays NaN, ±inf gives ±1.
        return select(1.0, -1.0, negative) + 1.0 / x;
    }
    if (ix < 0x3f580000u) {
        if (ix < 0x31800000u) {
            return 0.125 * (8.0 * x + 1.0270333290e+00 * x);
        }
        let z = x * x;
        let r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02
            + z * (-5.7702702470e-03 + z * -2.3763017452e-05)));
        let s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03
            + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
        return x + x * (r / s);
    }
    var y: f32;
    if (ix < 0x40c00000u) {
        y = 1.0 - erfc_tail(ix, x);
    } else {
        y = 1.0 - bitcast<f32>(0x03800000u);
    }
    return select(y, -y, negative);
}

// ----- activations -----------------------------------------------------------------------

// tanh from one exponential, without the overflow of sinh/cosh for large |x|.
fn tanh_stable(x: f32) -> f32 {
    let e = exp(2.0 * min(abs(x), 20.0));
    let t = 1.0 - 2.0 / (e + 1.0);
    return select(t, -t, x < 0.0);
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

const SQRT_2_OVER_PI: f32 = 0.7978846;
const GELU_TANH_COEFF: f32 = 0.044715;
const FRAC_1_SQRT_2: f32 = 0.70710677;
const FRAC_2_SQRT_PI: f32 = 1.1283792;

fn activate(act: u32, x: f32) -> f32 {
    switch act {
        case ACT_GELU: {
            return x * 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
        }
        case ACT_GELU_TANH: {
            let inner = SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x * x * x);
            return 0.5 * x * (1.0 + tanh_stable(inner));
        }
        case ACT_RELU: {
            return max(x, 0.0);
        }
        case ACT_TANH: {
            return tanh_stable(x);
        }
        case ACT_SILU: {
            return x / (1.0 + exp(-x));
        }
        case ACT_SIGMOID: {
            return sigmoid(x);
        }
        default: {
            return x;
        }
    }
}

fn derivative(act: u32, x: f32) -> f32 {
    switch act {
        case ACT_GELU: {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * x * x) * (0.5 * FRAC_2_SQRT_PI) * FRAC_1_SQRT_2;
            return cdf + x * pdf;
        }
        case ACT_GELU_TANH: {
            let x3 = x * x * x;
            let inner = SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x3);
            let t = tanh_stable(inner);
            let dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEFF * x * x);
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner;
        }
        case ACT_RELU: {
            return select(0.0, 1.0, x > 0.0);
        }
        case ACT_TANH: {
            let t = tanh_stable(x);
            return 1.0 - t * t;
        }
        case ACT_SILU: {
            let s = sigmoid(x);
            return s * (1.0 + x * (1.0 - s));
        }
        case ACT_SIGMOID: {
            let s = sigmoid(x);
            return s * (1.0 - s);
        }
        default: {
            return 1.0;
        }
    }
}

// ----- entry points ----------------------------------------------------------------------

// dst[i] = alpha
@compute @workgroup_size(ELEMENTWISE_WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        dst[i] = params.alpha;
    }
}

// dst[i] += src0[i]
@compute @workgroup_size(ELEMENTWISE_WG)
fn add_assign(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        dst[i] = dst[i] + src0[i];
    }
}

// dst[r, c] += src0[c]
@compute @workgroup_size(ELEMENTWISE_WG)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        dst[i] = dst[i] + src0[i % params.cols];
    }
}

// dst[r, c] *= src0[r]
@compute @workgroup_size(ELEMENTWISE_WG)
fn scale_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        dst[i] = dst[i] * src0[i / params.cols];
    }
}

// dst[i] *= alpha
@compute @workgroup_size(ELEMENTWISE_WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        dst[i] = dst[i] * params.alpha;
    }
}

// dst[i] = act(src0[i])
@compute @workgroup_size(ELEMENTWISE_WG)
fn activation(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        dst[i] = activate(params.act, src0[i]);
    }
}

// dst[i] (+)= src1[i] · act'(src0[i])   (src0 = x, src1 = dout)
@compute @workgroup_size(ELEMENTWISE_WG)
fn activation_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        let grad = src1[i] * derivative(params.act, src0[i]);
        if (params.accumulate != 0u) {
            dst[i] = dst[i] + grad;
        } else {
            dst[i] = grad;
        }
    }
}

// dst[b, i, c] = src0[b, row, c] + src0[b, i, c]   (cols = dim, len = tokens per sequence)
@compute @workgroup_size(ELEMENTWISE_WG)
fn add_sequence_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        let c = i % params.cols;
        let seq = i / (params.len * params.cols);
        let shared_row = (seq * params.len + params.row) * params.cols + c;
        dst[i] = src0[shared_row] + src0[i];
    }
}

// Backward of add_sequence_row (src0 = dout): dst[b, i, c] (+)= dout[b, i, c], and the thread of
// row `row` then adds Σ_i dout[b, i, c] in token order, as the CPU kernel does.
@compute @workgroup_size(ELEMENTWISE_WG)
fn add_sequence_row_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wid, nwg, lid);
    if (i < params.n) {
        var acc = src0[i];
        if (params.accumulate != 0u) {
            acc = dst[i] + src0[i];
        }
        let c = i % params.cols;
        let token = (i / params.cols) % params.len;
        if (token == params.row) {
            let seq_start = (i / (params.len * params.cols)) * params.len * params.cols;
            for (var t = 0u; t < params.len; t += 1u) {
                acc += src0[seq_start + t * params.cols + c];
            }
        }
        dst[i] = acc;
    }
}
