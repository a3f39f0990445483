//! Profiling through libtorch's Kineto profiler (shim/profiler.cpp): `start`, run the work,
//! `stop`; the result sums each operator's and kernel's time (torch.profiler's
//! `key_averages`) and can be written as a Chrome trace.

use crate::shim::check;
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_void, CString};

extern "C" {
    fn acc_profiler_start(cpu: i32, cuda: i32, record_shapes: i32, profile_memory: i32, with_flops: i32) -> i32;
    fn acc_profiler_stop(out: *mut *mut c_void) -> i32;
    fn acc_profile_len(profile: *mut c_void) -> i64;
    fn acc_profile_event(
        profile: *mut c_void,
        i: i64,
        name: *mut u8,
        name_length: usize,
        on_gpu: *mut i32,
        duration_ns: *mut i64,
        flops: *mut i64,
    ) -> i32;
    fn acc_profile_save(profile: *mut c_void, path: *const std::os::raw::c_char) -> i32;
    fn acc_profile_free(profile: *mut c_void);
}

const OP: &str = "profile";

/// What to record (torch.profiler's arguments).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfilerOptions {
    /// Operators on the CPU, with their host time.
    pub cpu: bool,
    /// Kernels on the GPU, with their device time.
    pub cuda: bool,
    pub record_shapes: bool,
    pub profile_memory: bool,
    pub with_flops: bool,
}

/// Starts profiling this process; fails if a profile is already running.
pub fn start(options: ProfilerOptions) -> Result<()> {
    if !options.cpu && !options.cuda {
        return Err(Error::invalid(OP, "record at least one activity (cpu or cuda)"));
    }
    let flag = |b: bool| i32::from(b);
    // SAFETY: plain values.
    check(OP, unsafe {
        acc_profiler_start(
            flag(options.cpu),
            flag(options.cuda),
            // Counting flops reads the operators' inputs, which only shape recording keeps (as torch's).
            flag(options.record_shapes || options.with_flops),
            flag(options.profile_memory),
            flag(options.with_flops),
        )
    })
}

/// One operator or kernel name's events added up.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    pub name: String,
    /// Whether these ran on a GPU (kernels, memcpy) rather than the CPU (operators).
    pub on_gpu: bool,
    pub count: u64,
    pub total_ns: u64,
    pub flops: u64,
}

/// A finished profile.
pub struct Profile {
    raw: *mut c_void,
}

impl Drop for Profile {
    fn drop(&mut self) {
        // SAFETY: `raw` came from acc_profiler_stop and is freed once.
        unsafe { acc_profile_free(self.raw) }
    }
}

/// Stops the running profile.
pub fn stop() -> Result<Profile> {
    let mut raw = std::ptr::null_mut();
    // SAFETY: `raw` is a valid out-pointer.
    check(OP, unsafe { acc_profiler_stop(&mut raw) })?;
    if raw.is_null() {
        return Err(Error::invalid(OP, "the profiler returned no result"));
    }
    Ok(Profile { raw })
}

impl Profile {
    /// Events added up per (name, CPU or GPU), the largest total time first.
    pub fn summary(&self) -> Result<Vec<ProfileRow>> {
        // SAFETY: a live profile.
        let len = unsafe { acc_profile_len(self.raw) };
        let mut rows: HashMap<(String, bool), ProfileRow> = HashMap::new();
        // Long enough for templated CUDA kernel names.
        let mut name = vec![0u8; 8192];
        for i in 0..len {
            let (mut on_gpu, mut duration, mut flops) = (0i32, 0i64, 0i64);
            // SAFETY: a live profile, an index below its length, a buffer of the length passed
            // and valid out-pointers.
            check(OP, unsafe {
                acc_profile_event(
                    self.raw,
                    i,
                    name.as_mut_ptr(),
                    name.len(),
                    &mut on_gpu,
                    &mut duration,
                    &mut flops,
                )
            })?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            let key = (String::from_utf8_lossy(&name[..end]).into_owned(), on_gpu != 0);
            let row = rows.entry(key.clone()).or_insert_with(|| ProfileRow {
                name: key.0,
                on_gpu: key.1,
                count: 0,
                total_ns: 0,
                flops: 0,
            });
            row.count += 1;
            row.total_ns += duration.max(0) as u64;
            row.flops += flops.max(0) as u64;
        }
        let mut rows: Vec<ProfileRow> = rows.into_values().collect();
        rows.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then_with(|| a.name.cmp(&b.name)));
        Ok(rows)
    }

    /// Writes the Chrome trace (chrome://tracing or Perfetto open it) to `path`. Kineto only
    /// logs a failed write, so the file is checked afterwards.
    pub fn save(&self, path: &str) -> Result<()> {
        let target = std::path::Path::new(path);
        if target.is_dir() {
            return Err(Error::invalid(
                OP,
                format!("cannot write the trace to {path}: a folder is there"),
            ));
        }
        // A trace left from an earlier run must not pass for this one.
        let _ = std::fs::remove_file(target);
        let c_path = CString::new(path).map_err(|_| Error::invalid(OP, "the trace path contains a NUL byte"))?;
        // SAFETY: a live profile and a valid C string.
        check(OP, unsafe { acc_profile_save(self.raw, c_path.as_ptr()) })?;
        if !target.is_file() {
            let _ = std::fs::remove_file(format!("{path}.tmp"));
            return Err(Error::invalid(
                OP,
                format!("the trace could not be written to {path} (libtorch's message above says why)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn records_operators_and_writes_a_trace() -> Result<()> {
        start(ProfilerOptions {
            cpu: true,
            ..Default::default()
        })?;
        let again = start(ProfilerOptions {
            cpu: true,
            ..Default::default()
        });
        let a = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
        let _ = a.matmul(&a);
        let profile = stop()?;
        assert!(again.is_err_and(|e| e.to_string().contains("already running")));
        let rows = profile.summary()?;
        assert!(
            rows.iter()
                .any(|r| r.name == "aten::matmul" && r.count == 1 && !r.on_gpu),
            "{rows:?}"
        );
        let path = std::env::temp_dir().join(format!("acc-profile-{}.json", std::process::id()));
        profile.save(&path.to_string_lossy())?;
        let trace = std::fs::read_to_string(&path).map_err(|e| Error::invalid(OP, e.to_string()))?;
        let _ = std::fs::remove_file(&path);
        assert!(trace.contains("aten::matmul"));
        assert!(stop().is_err_and(|e| e.to_string().contains("no profile is running")));
        Ok(())
    }
}
