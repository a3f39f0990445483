//! Gradient scaler tests against torch.amp.GradScaler("cpu") 2.11. The shared Python:
//!   p = torch.nn.Parameter(torch.tensor([1.0, 2.0])); opt = torch.optim.SGD([p], lr=0.1)
//!   s = torch.amp.GradScaler("cpu", growth_interval=3)
//!   for i in range(5):
//!       s.scale((p * p).sum()).backward()
//!       if i == 0: p.grad[0] = float("inf")
//!       s.step(opt); s.update(); opt.zero_grad()
//!       print(s.get_scale())   # 32768, 32768, 32768, 65536, 65536
//!   print(p, s.state_dict())   # [0.4096, 0.8192]; growth tracker 1

use super::*;
use crate::optim::{Algorithm, GroupSpec, Optimizer, OptionsPatch};
use crate::Result;
use tch::{Device, Kind, Tensor};

fn param(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().flatten(0, -1).to_kind(Kind::Double)).unwrap()
}

fn sgd(p: &Tensor) -> Optimizer {
    let options = OptionsPatch {
        lr: Some(0.1),
        ..Default::default()
    };
    let group = GroupSpec {
        params: vec![p.shallow_clone()],
        options: OptionsPatch::default(),
    };
    Optimizer::new(Algorithm::Sgd, &options, vec![group]).unwrap()
}

fn small_interval() -> GradScaler {
    GradScaler::new(ScalerOptions {
        growth_interval: 3,
        ..Default::default()
    })
    .unwrap()
}

/// One training step of the shared example; returns whether the optimizer stepped.
fn train_step(scaler: &mut GradScaler, p: &Tensor, opt: &mut Optimizer, inject_inf: bool) -> Result<bool> {
    let loss = (p * p).sum(Kind::Float);
    scaler.scale(&loss)?.backward();
    if inject_inf {
        let _ = p.grad().get(0).fill_(f64::INFINITY);
    }
    let stepped = scaler.step(&[p], || opt.step())?;
    scaler.update()?;
    opt.zero_grad(true)?;
    Ok(stepped)
}

#[test]
fn inf_skips_the_step_and_backs_off_then_clean_steps_grow() -> Result<()> {
    let p = param(&[1.0, 2.0]);
    let mut opt = sgd(&p);
    let mut scaler = small_interval();
    assert_eq!(scaler.get_scale()?, Some(65536.0));
    assert!(!train_step(&mut scaler, &p, &mut opt, true)?);
    assert_eq!(values(&p), vec![1.0, 2.0]);
    let mut scales = vec![scaler.get_scale()?.unwrap_or(0.0)];
    for _ in 0..4 {
        assert!(train_step(&mut scaler, &p, &mut opt, false)?);
        scales.push(scaler.get_scale()?.unwrap_or(0.0));
    }
    assert_eq!(scales, vec![32768.0, 32768.0, 32768.0, 65536.0, 65536.0]);
    let expected = [0.4096, 0.8192];
    for (a, e) in values(&p).iter().zip(expected) {
        assert!((a - e).abs() < 1e-6, "{a} vs {e}");
    }
    assert_eq!(scaler.state_dict()?.growth_tracker, 1);
    Ok(())
}

#[test]
fn unscaled_gradients_equal_the_true_gradients() -> Result<()> {
    let c = Tensor::from_slice(&[0.1f32, -0.2, 0.3]);
    let loss_of = |p: &Tensor| (p * &c).sum(Kind::Float) + (p * p).sum(Kind::Float) * 0.5;
    let plain = param(&[1.0, -2.0, 3.0]);
    loss_of(&plain).backward();
    let scaled = param(&[1.0, -2.0, 3.0]);
    let mut scaler = GradScaler::new(ScalerOptions::default())?;
    scaler.scale(&loss_of(&scaled))?.backward();
    // The scale is a power of two, so scaling and unscaling are exact in float32.
    let times_scale: Vec<f64> = values(&plain.grad()).iter().map(|g| g * 65536.0).collect();
    assert_eq!(values(&scaled.grad()), times_scale);
    scaler.unscale(&[&scaled])?;
    scaler.unscale(&[&scaled])?; // once per step: the second call changes nothing
    assert_eq!(values(&scaled.grad()), values(&plain.grad()));
    assert!(scaler.should_step(&[&scaled])?);
    scaler.update()?;
    Ok(())
}

#[test]
fn state_dict_round_trips_into_a_fresh_scaler() -> Result<()> {
    let p = param(&[1.0, 2.0]);
    let mut opt = sgd(&p);
    let mut scaler = small_interval();
    train_step(&mut scaler, &p, &mut opt, true)?;
    train_step(&mut scaler, &p, &mut opt, false)?;
    let state = scaler.state_dict()?;
    assert_eq!(
        state,
        ScalerState {
            scale: 32768.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 3,
            growth_tracker: 1,
        }
    );
    let mut fresh = GradScaler::new(ScalerOptions::default())?;
    fresh.load_state_dict(&state)?;
    assert_eq!(fresh.state_dict()?, state);
    // Two more clean steps complete the interval of 3, exactly as the original would.
    train_step(&mut fresh, &p, &mut opt, false)?;
    train_step(&mut fresh, &p, &mut opt, false)?;
    assert_eq!(fresh.get_scale()?, Some(65536.0));
    Ok(())
}

#[test]
fn float16_gradients_are_refused() -> Result<()> {
    let p = Tensor::ones([2], (Kind::Half, Device::Cpu)).set_requires_grad(true);
    let mut scaler = GradScaler::new(ScalerOptions::default())?;
    scaler.scale(&p.sum(Kind::Half))?.backward();
    let err = scaler.unscale(&[&p]).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.starts_with("unscale: attempting to unscale float16 gradients")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn misuse_is_reported() -> Result<()> {
    let p = param(&[1.0]);
    let mut scaler = GradScaler::new(ScalerOptions::default())?;
    let err = scaler.unscale(&[&p]).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("no loss was scaled")));
    scaler.scale(&p.sum(Kind::Float))?.backward();
    let err = scaler.update().err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("no gradients were unscaled")));
    assert!(scaler.should_step(&[&p])?);
    let err = scaler.should_step(&[&p]).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("already stepped")));
    let bad = GradScaler::new(ScalerOptions {
        backoff_factor: 1.5,
        ..Default::default()
    });
    assert!(bad.is_err_and(|e| e.to_string() == "GradScaler: backoffFactor must be in (0, 1), got 1.5"));
    Ok(())
}

#[test]
fn a_disabled_scaler_changes_nothing() -> Result<()> {
    let p = param(&[3.0]);
    let mut scaler = GradScaler::new(ScalerOptions {
        enabled: false,
        ..Default::default()
    })?;
    let loss = p.sum(Kind::Float);
    let scaled = scaler.scale(&loss)?;
    assert_eq!(values(&scaled), vec![3.0]);
    scaled.backward();
    let _ = p.grad().fill_(f64::NAN);
    assert!(scaler.should_step(&[&p])?);
    scaler.update()?;
    assert_eq!(scaler.get_scale()?, None);
    Ok(())
}
