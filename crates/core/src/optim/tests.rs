//! Unit tests of the optimizers against values recorded from torch 2.11 (see each test's
//! Python), state-dict round trips and checks, zeroing and clipping of gradients.
//!
//! The shared example, in Python:
//!   p1 = torch.tensor([[1.0, -2.0, 3.0], [0.5, -0.25, 2.0]], requires_grad=True)
//!   p2 = torch.tensor([0.3, -0.7], requires_grad=True)
//!   c = torch.tensor([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]])
//!   loss = (p1 * c).sum() + (p2 ** 2).sum()      # each step: zero_grad, backward, step

use super::*;
use tch::{Device, Kind, Tensor};

fn params() -> (Tensor, Tensor) {
    let p1 = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5, -0.25, 2.0])
        .reshape([2, 3])
        .set_requires_grad(true);
    let p2 = Tensor::from_slice(&[0.3f32, -0.7]).set_requires_grad(true);
    (p1, p2)
}

fn backward(p1: &Tensor, p2: &Tensor) {
    let c = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.4, -0.5, 0.6]).reshape([2, 3]);
    let loss = (p1 * c).sum(Kind::Float) + (p2 * p2).sum(Kind::Float);
    loss.backward();
}

fn train(opt: &mut Optimizer, p1: &Tensor, p2: &Tensor, steps: usize) {
    for _ in 0..steps {
        opt.zero_grad(true).unwrap();
        backward(p1, p2);
        opt.step().unwrap();
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap()
}

fn assert_close(actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol, "element {i}: {a} vs {e}");
    }
}

fn one_group(p1: &Tensor, p2: &Tensor) -> Vec<GroupSpec> {
    vec![GroupSpec {
        params: vec![p1.shallow_clone(), p2.shallow_clone()],
        options: OptionsPatch::default(),
    }]
}

fn adamw_options() -> OptionsPatch {
    OptionsPatch {
        lr: Some(0.1),
        betas: Some(vec![0.9, 0.99]),
        weight_decay: Some(0.1),
        ..Default::default()
    }
}

/// p1 and p2 after 3 steps of
/// torch.optim.AdamW([p1, p2], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1).
const ADAMW_THREE_STEPS: ([f64; 6], [f64; 2]) = (
    [
        0.673_289_06,
        -1.643_587_9,
        2.613_887_5,
        0.188_139_5,
        0.054_435_227,
        1.643_587_9,
    ],
    [0.007_791_571, -0.385_098_84],
);

#[test]
fn adamw_matches_torch_over_three_steps() {
    let (p1, p2) = params();
    let mut opt = Optimizer::new(Algorithm::AdamW, &adamw_options(), one_group(&p1, &p2)).unwrap();
    train(&mut opt, &p1, &p2, 3);
    assert_close(&values(&p1), &ADAMW_THREE_STEPS.0, 1e-6);
    assert_close(&values(&p2), &ADAMW_THREE_STEPS.1, 1e-6);
}

#[test]
fn steps_reading_the_learning_rate_from_tensors_follow_write_lr() {
    // A recorded step (compileStep) reads the rate where write_lr put it, with every algorithm:
    // the same as the numbers when it is written after each change, the first rate when not.
    for algorithm in [Algorithm::AdamW, Algorithm::Adam, Algorithm::Sgd] {
        let run = |rates: [f64; 3], from_tensor: bool, write: bool| {
            let (p1, p2) = params();
            let options = OptionsPatch {
                lr: Some(0.1),
                weight_decay: Some(0.1),
                momentum: (algorithm == Algorithm::Sgd).then_some(0.9),
                ..Default::default()
            };
            let mut opt = Optimizer::new(algorithm, &options, one_group(&p1, &p2)).unwrap();
            // State is made by a step that is not recorded (a recorded step refuses to make it).
            train(&mut opt, &p1, &p2, 1);
            opt.record_lr(from_tensor).unwrap();
            for lr in rates {
                let patch = OptionsPatch {
                    lr: Some(lr),
                    ..Default::default()
                };
                opt.set_options(0, &patch).unwrap();
                if write {
                    opt.write_lr().unwrap();
                }
                train(&mut opt, &p1, &p2, 1);
            }
            [values(&p1), values(&p2)].concat()
        };
        let moving = [0.1, 0.05, 0.01];
        assert_close(&run(moving, true, true), &run(moving, false, false), 1e-7);
        assert_close(&run(moving, true, false), &run([0.1; 3], false, false), 1e-7);
    }
}

#[test]
fn a_recorded_step_refuses_to_create_optimizer_state() {
    let (p1, p2) = params();
    let mut opt = Optimizer::new(Algorithm::AdamW, &adamw_options(), one_group(&p1, &p2)).unwrap();
    opt.record_lr(true).unwrap();
    backward(&p1, &p2);
    let err = opt.step().unwrap_err().to_string();
    assert!(
        err.contains("optimizer state would be created while the step is recorded"),
        "{err}"
    );
    assert_eq!(opt.state_bytes(), 0);
}

#[test]
fn sgd_groups_use_their_own_options() {
    // torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.01, "momentum": 0.5}],
    //                 momentum=0.9, dampening=0.1), 3 steps
    let (p1, p2) = params();
    let groups = vec![
        GroupSpec {
            params: vec![p1.shallow_clone()],
            options: OptionsPatch {
                lr: Some(0.1),
                ..Default::default()
            },
        },
        GroupSpec {
            params: vec![p2.shallow_clone()],
            options: OptionsPatch {
                lr: Some(0.01),
                momentum: Some(0.5),
                ..Default::default()
            },
        },
    ];
    let defaults = OptionsPatch {
        momentum: Some(0.9),
        dampening: Some(0.1),
        ..Default::default()
    };
    let mut opt = Optimizer::new(Algorithm::Sgd, &defaults, groups).unwrap();
    train(&mut opt, &p1, &p2, 3);
    assert_close(
        &values(&p1),
        &[0.9468, -1.8936, 2.840_400_2, 0.287_200_03, 0.015_999_993, 1.680_799_8],
        1e-6,
    );
    assert_close(&values(&p2), &[0.276_419_25, -0.644_978_2], 1e-6);
}

#[test]
fn state_dict_round_trip_continues_identically() {
    let (p1, p2) = params();
    let mut first = Optimizer::new(Algorithm::AdamW, &adamw_options(), one_group(&p1, &p2)).unwrap();
    train(&mut first, &p1, &p2, 2);
    let sd = first.state_dict();
    let keys: Vec<&str> = sd.state.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "0.exp_avg",
            "0.exp_avg_sq",
            "0.step",
            "1.exp_avg",
            "1.exp_avg_sq",
            "1.step"
        ]
    );
    assert_eq!(sd.param_groups[0].params, [0, 1]);

    let (q1, q2) = params();
    q1.detach().copy_(&p1);
    q2.detach().copy_(&p2);
    let mut second = Optimizer::new(Algorithm::AdamW, &OptionsPatch::default(), one_group(&q1, &q2)).unwrap();
    second.load_state_dict(&sd).unwrap();
    assert_eq!(second.hyperparams(0).unwrap().lr, 0.1);
    train(&mut first, &p1, &p2, 1);
    train(&mut second, &q1, &q2, 1);
    assert_eq!(values(&p1), values(&q1));
    assert_eq!(values(&p2), values(&q2));
    // Loading copied the state: the second optimizer's steps did not move the first's.
    assert_eq!(f64::try_from(&first.state(0).unwrap()["step"]).unwrap(), 3.0);
}

#[test]
fn load_state_dict_names_what_mismatched() {
    let (p1, p2) = params();
    let mut opt = Optimizer::new(Algorithm::Adam, &OptionsPatch::default(), one_group(&p1, &p2)).unwrap();
    train(&mut opt, &p1, &p2, 1);
    let mut sd = opt.state_dict();
    sd.state[0].1 = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
    let err = opt.load_state_dict(&sd).unwrap_err().to_string();
    assert_eq!(
        err,
        "Adam.loadStateDict: state 0.exp_avg has shape [3, 2] but its parameter has shape [2, 3]"
    );
    let mut sd = opt.state_dict();
    sd.param_groups[0].params.pop();
    let err = opt.load_state_dict(&sd).unwrap_err().to_string();
    assert!(
        err.contains("param group 0 has 1 parameters in the state dict but 2"),
        "{err}"
    );
    let mut sd = opt.state_dict();
    sd.state.retain(|(k, _)| k != "1.step");
    let err = opt.load_state_dict(&sd).unwrap_err().to_string();
    assert!(
        err.contains("parameter 1 has state exp_avg, exp_avg_sq but lacks step"),
        "{err}"
    );
}

#[test]
fn empty_and_duplicate_params_are_refused() {
    let err = Optimizer::new(Algorithm::Sgd, &OptionsPatch::default(), vec![])
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "SGD: got an empty parameter list");
    let (p1, _) = params();
    let groups = vec![GroupSpec {
        params: vec![p1.shallow_clone(), p1.shallow_clone()],
        options: OptionsPatch::default(),
    }];
    let err = Optimizer::new(Algorithm::Sgd, &OptionsPatch::default(), groups)
        .err()
        .unwrap();
    assert!(err.to_string().contains("the same parameter appears twice"));
}

#[test]
fn non_leaf_params_are_refused() {
    let (p1, _) = params();
    let computed = &p1 * 2.0;
    let groups = vec![GroupSpec {
        params: vec![computed],
        options: OptionsPatch::default(),
    }];
    let err = Optimizer::new(Algorithm::Adam, &OptionsPatch::default(), groups)
        .err()
        .unwrap();
    assert!(err
        .to_string()
        .starts_with("Adam: can't optimize parameter 0 (param group 0, shape [2, 3]): it is not a leaf"));
}

#[test]
fn zero_grad_sets_to_none_or_zeros() {
    let (p1, p2) = params();
    let opt = Optimizer::new(Algorithm::Sgd, &OptionsPatch::default(), one_group(&p1, &p2)).unwrap();
    backward(&p1, &p2);
    opt.zero_grad(false).unwrap();
    assert_eq!(values(&p1.grad()), vec![0.0; 6]);
    opt.zero_grad(true).unwrap();
    assert!(!p1.grad().defined());
    assert!(!p2.grad().defined());
}

#[test]
fn params_without_grads_are_skipped() {
    let (p1, p2) = params();
    let mut opt = Optimizer::new(Algorithm::Adam, &OptionsPatch::default(), one_group(&p1, &p2)).unwrap();
    let c = Tensor::from_slice(&[1.0f32, 1.0]);
    (&p2 * c).sum(Kind::Float).backward();
    opt.step().unwrap();
    assert_eq!(values(&p1), [1.0, -2.0, 3.0, 0.5, -0.25, 2.0]);
    assert!(opt.state(0).unwrap().is_empty());
    assert!(!opt.state(1).unwrap().is_empty());
}

#[test]
fn clip_grad_norm_matches_torch() {
    // total = torch.nn.utils.clip_grad_norm_([p1, p2], 0.5, 2.0) after one backward
    let (p1, p2) = params();
    backward(&p1, &p2);
    let total = clip_grad_norm(&[&p1, &p2], 0.5, 2.0, false).unwrap();
    assert!((total - 1.797_220_1).abs() < 1e-6);
    assert_close(
        &values(&p1.grad()),
        &[
            0.027_820_73,
            -0.055_641_46,
            0.083_462_19,
            0.111_282_92,
            -0.139_103_65,
            0.166_924_39,
        ],
        1e-7,
    );
    assert_close(&values(&p2.grad()), &[0.166_924_39, -0.389_490_22], 1e-7);
}

#[test]
fn clip_grad_norm_with_no_grads_is_zero() {
    let (p1, _) = params();
    assert_eq!(clip_grad_norm(&[&p1], 1.0, f64::INFINITY, true).unwrap(), 0.0);
}

#[test]
fn added_group_takes_defaults_and_refuses_known_params() {
    let (p1, p2) = params();
    let first = vec![GroupSpec {
        params: vec![p1.shallow_clone()],
        options: OptionsPatch::default(),
    }];
    let defaults = OptionsPatch {
        lr: Some(0.5),
        ..Default::default()
    };
    let mut opt = Optimizer::new(Algorithm::Adam, &defaults, first).unwrap();
    let again = GroupSpec {
        params: vec![p1.shallow_clone()],
        options: OptionsPatch::default(),
    };
    assert!(opt.add_group(again).is_err());
    assert_eq!(opt.groups().len(), 1);
    let second = GroupSpec {
        params: vec![p2.shallow_clone()],
        options: OptionsPatch {
            eps: Some(1e-6),
            ..Default::default()
        },
    };
    opt.add_group(second).unwrap();
    assert_eq!(opt.num_params(), 2);
    assert_eq!(opt.hyperparams(1).unwrap().lr, 0.5);
    assert_eq!(opt.hyperparams(1).unwrap().eps, 1e-6);
}

/// The same updates on CUDA (params on the GPU, and a group mixing CPU and GPU params),
/// a CPU state dict loaded onto GPU params, and clipping across devices.
#[test]
#[ignore = "needs a CUDA device: cargo test -- --ignored on a GPU host"]
fn fused_kernels_on_cuda_match_torch() {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let cuda = Device::Cuda(0);
    let (c1, c2) = params();
    let p1 = c1.detach().to_device(cuda).set_requires_grad(true);
    let p2 = c2.set_requires_grad(true); // stays on the CPU: one group, two devices
    let backward_mixed = |p1: &Tensor, p2: &Tensor| {
        let c = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.4, -0.5, 0.6])
            .reshape([2, 3])
            .to_device(cuda);
        let loss = (p1 * c).sum(Kind::Float).to_device(Device::Cpu) + (p2 * p2).sum(Kind::Float);
        loss.backward();
    };
    let mut opt = Optimizer::new(Algorithm::AdamW, &adamw_options(), one_group(&p1, &p2)).unwrap();
    for _ in 0..3 {
        opt.zero_grad(true).unwrap();
        backward_mixed(&p1, &p2);
        opt.step().unwrap();
    }
    assert_eq!(opt.state(0).unwrap()["step"].device(), cuda);
    assert_close(&values(&p1), &ADAMW_THREE_STEPS.0, 1e-5);
    assert_close(&values(&p2), &ADAMW_THREE_STEPS.1, 1e-5);

    // SGD with nesterov momentum, all on the GPU, resumed from a state dict saved on the CPU.
    let (c1, c2) = params();
    let mut cpu_opt = Optimizer::new(
        Algorithm::Sgd,
        &OptionsPatch {
            lr: Some(0.1),
            momentum: Some(0.9),
            nesterov: Some(true),
            weight_decay: Some(0.01),
            ..Default::default()
        },
        one_group(&c1, &c2),
    )
    .unwrap();
    train(&mut cpu_opt, &c1, &c2, 1);
    let g1 = c1.detach().to_device(cuda).set_requires_grad(true);
    let g2 = c2.detach().to_device(cuda).set_requires_grad(true);
    let mut gpu_opt = Optimizer::new(Algorithm::Sgd, &OptionsPatch::default(), one_group(&g1, &g2)).unwrap();
    gpu_opt.load_state_dict(&cpu_opt.state_dict()).unwrap();
    assert_eq!(gpu_opt.state(0).unwrap()["momentum_buffer"].device(), cuda);
    for _ in 0..2 {
        gpu_opt.zero_grad(true).unwrap();
        backward_mixed(&g1, &g2);
        gpu_opt.step().unwrap();
    }
    assert_close(
        &values(&g1),
        &[
            0.911_613_9,
            -1.823_227_8,
            2.734_841_6,
            0.174_578_47,
            0.153_763_71,
            1.501_823_9,
        ],
        1e-5,
    );
    assert_close(&values(&g2), &[-0.033_495_333, 0.078_155_76], 1e-5);

    // Clipping with grads on two devices: the total norm is computed on the first grad's device.
    let (c1, c2) = params();
    let p1 = c1.detach().to_device(cuda).set_requires_grad(true);
    let p2 = c2.set_requires_grad(true);
    backward_mixed(&p1, &p2);
    let total = clip_grad_norm(&[&p1, &p2], 0.5, 2.0, false).unwrap();
    assert!((total - 1.797_220_1).abs() < 1e-5);
    assert_close(&values(&p2.grad()), &[0.166_924_39, -0.389_490_22], 1e-6);
}
