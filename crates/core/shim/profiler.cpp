// libtorch's Kineto profiler (what torch.profiler drives): start with the activities to
// record, stop to get the events (operators on the CPU, kernels on the GPU) and a Chrome
// trace. One profile at a time per process, as in PyTorch.
#include "shim.h"
#include <atomic>
#include <set>
#include <torch/csrc/autograd/profiler_kineto.h>

namespace {
using torch::autograd::profiler::ProfilerResult;
using torch::profiler::impl::ActivityType;

// Whether a profile started here is running. libtorch's own process-wide flag is only set
// when CPU activity is recorded, so a GPU-only profile needs this one.
std::atomic<bool> running{false};
}  // namespace

extern "C" int acc_profiler_start(int cpu, int cuda, int record_shapes, int profile_memory, int with_flops) {
  ACC_PROTECT({
    TORCH_CHECK(!running.load() && !torch::autograd::profiler::isProfilerEnabledInMainThread(), "a profile is already running");
    torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO, record_shapes != 0,
                                                 profile_memory != 0, /*with_stack=*/false, with_flops != 0);
    std::set<ActivityType> activities;
    if (cpu != 0) activities.insert(ActivityType::CPU);
    if (cuda != 0) activities.insert(ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    running.store(true);
  })
}

// Stops the running profile; *out owns its result until acc_profile_free.
extern "C" int acc_profiler_stop(void** out) {
  ACC_PROTECT({
    TORCH_CHECK(running.load(), "no profile is running");
    running.store(false);
    *out = torch::autograd::profiler::disableProfiler().release();
  })
}

extern "C" int64_t acc_profile_len(void* profile) noexcept {
  return static_cast<int64_t>(static_cast<ProfilerResult*>(profile)->events().size());
}

// Event i: its name (copied into `name`, truncated to `name_length` - 1 bytes), whether it ran
// on a GPU, its duration in nanoseconds and its floating-point operations (0 when not counted).
extern "C" int acc_profile_event(void* profile, int64_t i, char* name, size_t name_length, int32_t* on_gpu,
                                 int64_t* duration_ns, int64_t* flops) {
  ACC_PROTECT({
    const auto& event = static_cast<ProfilerResult*>(profile)->events().at(static_cast<size_t>(i));
    std::snprintf(name, name_length, "%s", event.name().c_str());
    *on_gpu = event.deviceType() == c10::DeviceType::CUDA ? 1 : 0;
    *duration_ns = static_cast<int64_t>(event.durationNs());
    *flops = static_cast<int64_t>(event.flops());
  })
}

// Writes the Chrome trace (chrome://tracing, Perfetto) to `path`.
extern "C" int acc_profile_save(void* profile, const char* path) {
  ACC_PROTECT({ static_cast<ProfilerResult*>(profile)->save(std::string(path)); })
}

extern "C" void acc_profile_free(void* profile) noexcept { delete static_cast<ProfilerResult*>(profile); }
