//! Device names (`cpu`, `cuda`, `cuda:1`) and what this host has.

use crate::{Error, Result};
use tch::Device;

pub fn parse(op: &str, name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match name.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(index) => Device::Cuda(index),
            None => {
                return Err(Error::invalid(
                    op,
                    format!("unknown device \"{name}\" (expected \"cpu\", \"cuda\" or \"cuda:N\")"),
                ))
            }
        },
    };
    if let Device::Cuda(index) = device {
        let count = cuda_device_count();
        if index >= count {
            return Err(Error::invalid(
                op,
                format!("device \"{name}\" is not available: this host has {count} CUDA device(s)"),
            ));
        }
    }
    Ok(device)
}

pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".to_string(),
        Device::Vulkan => "vulkan".to_string(),
    }
}

pub fn cuda_device_count() -> usize {
    tch::Cuda::device_count().max(0) as usize
}

pub fn cuda_is_available() -> bool {
    tch::Cuda::is_available()
}
