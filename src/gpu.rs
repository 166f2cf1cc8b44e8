//! GPU hosts: `/var/lib/ecs/gpu/nvidia-gpu-info.json` from NVML (packaging/COMPATIBILITY.md §7).
//!
//! The agent advertises the GPUs listed in that file, so without it a GPU host registers no
//! GPUs. When GPU support is on and some `/dev/nvidia*` exists, `pre-start` loads the NVIDIA
//! Management Library at run time (`dlopen` of `libnvidia-ml.so.1`, so the same binary runs on
//! hosts without any NVIDIA driver), reads the driver version and every device's UUID, shuts
//! NVML down and writes `{"DriverVersion":"…","GPUIDs":["GPU-…",…],…}` atomically, directory
//! and file mode 0700. Every NVML failure of those calls is an error naming the NVML call and
//! NVML's own error string (`nvmlErrorString`), and no file is written.
//!
//! The newer Go tool also writes what the agent needs to decide whether to advertise MPS GPU
//! sharing (COMPATIBILITY.md §7): each GPU's usable memory (`GPUMemoryMiB`, NVML's v2 total
//! less reserved, all GPUs or none), whether the MPS control binary is installed, whether its
//! systemd unit is enabled, and whether any GPU is a vGPU slice. Those facts never fail the
//! step: the vGPU and MPS checks fail open as Go's do, and memory that cannot be read for every
//! GPU (an older driver without `nvmlDeviceGetMemoryInfo_v2`, an NVML error, a reading with
//! more reserved than total) leaves `GPUMemoryMiB` out with a warning, where Go fails its
//! setup (README, differences).
//!
//! The NVML functions are bound by hand with `libloading` rather than through
//! `nvml-wrapper`: that crate binds the whole API (hundreds of symbols, all looked up at load
//! time) and reports errors with its own wording instead of NVML's.
//!
//! The process must be dynamically linked: a static glibc program cannot use a `dlopen`ed
//! glibc library such as NVML (see packaging/README.md for how the packaged launcher is built).
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_uint, c_ulonglong, CStr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The knob that turns GPU support on (also passed to the agent through the env files).
pub const ENABLE_KEY: &str = "ECS_ENABLE_GPU_SUPPORT";
/// The knob naming the NVML library (a path, or a name for the dynamic loader to search).
pub const LIBRARY_KEY: &str = "ECS_INIT_NVML_LIBRARY";
/// NVML's soname, as installed by every NVIDIA driver package (the unversioned
/// `libnvidia-ml.so` comes only with development packages).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
/// The file the agent reads, under the GPU directory.
pub const INFO_FILE: &str = "nvidia-gpu-info.json";
/// The knob of the window for a late `/dev/nvidia*`.
pub const WAIT_KEY: &str = "ECS_INIT_GPU_WAIT_SECONDS";
/// Time between two looks for `/dev/nvidia*` (the Go tool's 3 s).
pub const WAIT_INTERVAL: Duration = Duration::from_secs(3);
/// The NVIDIA MPS control daemon's binary, as the GPU AMI installs it (the Go tool's check).
pub const MPS_CONTROL: &str = "/usr/bin/nvidia-cuda-mps-control";
/// The systemd unit that runs the MPS control daemon.
pub const MPS_SERVICE: &str = "nvidia-mps.service";
/// How long `systemctl is-enabled` may take before the unit counts as not enabled.
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(5);
/// The line the Go ecs-init logs whenever GPU support is on.
pub const EULA: &str = "By using the GPU Optimized AMI, you agree to Nvidia’s End User License Agreement: https://www.nvidia.com/en-us/about-nvidia/eula-agreement/";

/// Everything the GPU step needs, decided once from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOptions {
    /// `ECS_ENABLE_GPU_SUPPORT` is true.
    pub enabled: bool,
    /// `ECS_INIT_NVML_LIBRARY`, when set; otherwise [`DEFAULT_LIBRARY`] is searched.
    pub nvml_library: Option<PathBuf>,
    /// Where the `nvidia*` device nodes are looked for (`/dev`; not re-rooted).
    pub dev_dir: PathBuf,
    /// `/var/lib/ecs/gpu`, re-rooted by `ECS_INIT_HOST_ROOT`.
    pub out_dir: PathBuf,
    /// How long to wait for a late `/dev/nvidia*` (`ECS_INIT_GPU_WAIT_SECONDS`).
    pub wait: Duration,
    /// Time between two looks ([`WAIT_INTERVAL`]; shorter in unit tests).
    pub wait_interval: Duration,
    /// [`MPS_CONTROL`], re-rooted by `ECS_INIT_HOST_ROOT`.
    pub mps_control: PathBuf,
}

impl GpuOptions {
    /// How many looks for `/dev/nvidia*` the window allows, [`Self::wait_interval`] apart
    /// (at least one): 10 for the default 30 s, like the Go tool.
    pub fn tries(&self) -> u32 {
        let interval = self.wait_interval.as_millis().max(1);
        (self.wait.as_millis() / interval).clamp(1, u32::MAX as u128) as u32
    }

    /// `/var/lib/ecs/gpu/nvidia-gpu-info.json` (re-rooted).
    pub fn info_file(&self) -> PathBuf {
        self.out_dir.join(INFO_FILE)
    }

    /// The library name or path handed to `dlopen`.
    pub fn library(&self) -> &Path {
        self.nvml_library
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_LIBRARY))
    }
}

/// The file's content, with the field names and order the agent reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    #[serde(rename = "DriverVersion")]
    pub driver_version: String,
    #[serde(rename = "GPUIDs")]
    pub gpu_ids: Vec<String>,
    /// Usable memory per GPU UUID (MiB); left out unless every GPU's could be read.
    #[serde(rename = "GPUMemoryMiB", skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mib: Option<BTreeMap<String, u64>>,
    #[serde(rename = "MpsControlBinaryPresent")]
    pub mps_control_binary_present: bool,
    #[serde(rename = "MpsServiceEnabled")]
    pub mps_service_enabled: bool,
    /// Some GPU is a vGPU slice (which rules MPS out).
    #[serde(rename = "HasVGPU")]
    pub has_vgpu: bool,
}

impl GpuInfo {
    /// The bytes written: compact JSON, no trailing newline (as Go's `json.Marshal`).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings always serialise")
    }
}

/// What the GPU step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `ECS_ENABLE_GPU_SUPPORT` is not true.
    Disabled,
    /// Enabled, but no `/dev/nvidia*`: not a GPU host, nothing written.
    NoDevices,
    /// The file was written.
    Written { path: PathBuf, info: GpuInfo },
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot list {}: {source}", dir.display())]
    ListDevices {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} exists but the NVML library {library} cannot be loaded ({reason}); install the NVIDIA driver, or set {LIBRARY_KEY} to the library's path",
        devices.display()
    )]
    Load {
        devices: PathBuf,
        library: String,
        reason: String,
    },
    #[error("the NVML library {library} has no function {symbol} ({reason})")]
    Symbol {
        library: String,
        symbol: &'static str,
        reason: String,
    },
    #[error("NVML call {call}{} failed: {message} (NVML error {code})", device_suffix(*device))]
    Call {
        call: &'static str,
        device: Option<u32>,
        code: u32,
        message: String,
    },
    #[error("NVML call {call}{} returned an empty string", device_suffix(*device))]
    Empty {
        call: &'static str,
        device: Option<u32>,
    },
    #[error("NVML call nvmlDeviceGetCount_v2 reports no GPU devices although {} exists", devices.display())]
    NoGpus { devices: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn device_suffix(device: Option<u32>) -> String {
    device.map(|d| format!(" (device {d})")).unwrap_or_default()
}

/// The first `nvidia*` entry of `dev_dir`, if any (the Go tool's `/dev/nvidia*` glob).
pub fn nvidia_device(dev_dir: &Path) -> Result<Option<PathBuf>, GpuError> {
    let entries = match std::fs::read_dir(dev_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(GpuError::ListDevices {
                dir: dev_dir.into(),
                source,
            })
        }
    };
    let mut names: Vec<_> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.as_encoded_bytes().starts_with(b"nvidia"))
        .collect();
    names.sort();
    Ok(names.first().map(|n| dev_dir.join(n)))
}

/// Look for `/dev/nvidia*` up to [`GpuOptions::tries`] times, [`GpuOptions::wait_interval`]
/// apart, logging each look that finds none (a driver that loads a few seconds after boot
/// creates its device nodes late). `None`: none appeared in the window. Callers that must answer
/// SIGTERM during the wait drop this future then (`start` does; `pre-start` keeps the default
/// disposition, so a SIGTERM ends it at once).
pub async fn wait_for_device(opts: &GpuOptions) -> Result<Option<PathBuf>, GpuError> {
    let tries = opts.tries();
    for attempt in 1..=tries {
        if let Some(device) = nvidia_device(&opts.dev_dir)? {
            if attempt > 1 {
                tracing::info!(device = %device.display(), attempt, "GPU device appeared");
            }
            return Ok(Some(device));
        }
        if attempt < tries {
            tracing::info!(
                dir = %opts.dev_dir.display(),
                attempt,
                tries,
                next_in_ms = opts.wait_interval.as_millis() as u64,
                "{ENABLE_KEY} is on but no nvidia* device exists yet; looking again"
            );
            tokio::time::sleep(opts.wait_interval).await;
        }
    }
    tracing::warn!(
        dir = %opts.dev_dir.display(),
        tries,
        "No GPU devices found, ignoring the GPU support config: no nvidia* device after {tries} looks over {} s ({WAIT_KEY}); no GPU info is written and {ENABLE_KEY} is left out of the agent's environment",
        opts.wait_interval.as_secs_f64() * f64::from(tries - 1)
    );
    Ok(None)
}

/// The GPU step of `pre-start` (also the hidden `gpu-info` action): wait for a late
/// `/dev/nvidia*`, then write the info file from NVML.
pub async fn setup(opts: &GpuOptions, exec: &dyn ecs_host::Exec) -> Result<Outcome, GpuError> {
    if !opts.enabled {
        tracing::debug!("{ENABLE_KEY} is not true: no GPU setup");
        return Ok(Outcome::Disabled);
    }
    tracing::info!("{EULA}");
    let Some(device) = wait_for_device(opts).await? else {
        return Ok(Outcome::NoDevices);
    };
    let mut info = query(opts.library(), &device)?;
    info.mps_control_binary_present = std::fs::metadata(&opts.mps_control).is_ok();
    info.mps_service_enabled = mps_service_enabled(exec).await;
    let path = opts.info_file();
    write_info(&opts.out_dir, &path, &info.to_bytes())?;
    tracing::info!(
        file = %path.display(),
        driver = %info.driver_version,
        gpus = info.gpu_ids.len(),
        memory = info.gpu_memory_mib.is_some(),
        mps_control = info.mps_control_binary_present,
        mps_service = info.mps_service_enabled,
        vgpu = info.has_vgpu,
        "GPU info written"
    );
    Ok(Outcome::Written { path, info })
}

/// Whether `systemctl is-enabled nvidia-mps.service` prints `enabled` or `enabled-runtime`
/// (the printed state decides, not the exit status, which is non-zero for a disabled unit
/// too). No systemctl, a timeout or anything else: not enabled.
async fn mps_service_enabled(exec: &dyn ecs_host::Exec) -> bool {
    let args = ["is-enabled".to_string(), MPS_SERVICE.to_string()];
    match exec.run_within("systemctl", &args, SYSTEMCTL_LIMIT).await {
        Ok(out) => service_enabled(&out.stdout),
        Err(e) => {
            tracing::debug!(error = %e, "systemctl is-enabled {MPS_SERVICE}: counted as not enabled");
            false
        }
    }
}

/// What `systemctl is-enabled` printed means enabled.
fn service_enabled(printed: &str) -> bool {
    matches!(printed.trim(), "enabled" | "enabled-runtime")
}

/// Load NVML, read the driver version and every UUID, shut NVML down.
fn query(library: &Path, device: &Path) -> Result<GpuInfo, GpuError> {
    let nvml = Nvml::load(library, device)?;
    nvml.check("nvmlInit_v2", None, unsafe { (nvml.init)() })?;
    let result = read_info(&nvml, device);
    // Shut down whatever the outcome; a failure here changes nothing that was read.
    let rc = unsafe { (nvml.shutdown)() };
    if let Err(e) = nvml.check("nvmlShutdown", None, rc) {
        tracing::warn!("{e}");
    }
    result
}

fn read_info(nvml: &Nvml, device_node: &Path) -> Result<GpuInfo, GpuError> {
    // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE is 80; NVML_DEVICE_UUID_V2_BUFFER_SIZE is 96.
    let mut buf = [0 as c_char; 96];
    let call = "nvmlSystemGetDriverVersion";
    nvml.check(call, None, unsafe {
        (nvml.driver_version)(buf.as_mut_ptr(), buf.len() as c_uint)
    })?;
    let driver_version = c_string(&buf).ok_or(GpuError::Empty { call, device: None })?;

    let mut count: c_uint = 0;
    nvml.check("nvmlDeviceGetCount_v2", None, unsafe {
        (nvml.device_count)(&mut count)
    })?;
    if count == 0 {
        return Err(GpuError::NoGpus {
            devices: device_node.into(),
        });
    }
    let mut gpu_ids = Vec::with_capacity(count as usize);
    let mut has_vgpu = false;
    // Every GPU's usable memory, or why not (all or none, as the agent expects).
    let mut memory: Result<BTreeMap<String, u64>, String> = Ok(BTreeMap::new());
    for index in 0..count {
        let mut handle: NvmlDevice = std::ptr::null_mut();
        nvml.check("nvmlDeviceGetHandleByIndex_v2", Some(index), unsafe {
            (nvml.handle_by_index)(index, &mut handle)
        })?;
        let call = "nvmlDeviceGetUUID";
        let mut buf = [0 as c_char; 96];
        nvml.check(call, Some(index), unsafe {
            (nvml.uuid)(handle, buf.as_mut_ptr(), buf.len() as c_uint)
        })?;
        let uuid = c_string(&buf).ok_or(GpuError::Empty {
            call,
            device: Some(index),
        })?;
        has_vgpu |= nvml.is_vgpu(handle);
        memory = memory.and_then(|mut m| {
            m.insert(uuid.clone(), nvml.usable_memory_mib(handle, index)?);
            Ok(m)
        });
        gpu_ids.push(uuid);
    }
    let gpu_memory_mib = match memory {
        Ok(m) => Some(m),
        Err(why) => {
            tracing::warn!(
                "GPUMemoryMiB is left out of the GPU info ({why}); the GPUs are registered without their memory"
            );
            None
        }
    };
    Ok(GpuInfo {
        driver_version,
        gpu_ids,
        gpu_memory_mib,
        mps_control_binary_present: false,
        mps_service_enabled: false,
        has_vgpu,
    })
}

/// The text in `buf` up to its first NUL (or its end), trimmed; `None` when empty.
fn c_string(buf: &[c_char]) -> Option<String> {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// `nvmlReturn_t`: a C enum, `NVML_SUCCESS` is 0.
type NvmlReturn = c_uint;
/// `nvmlDevice_t`: an opaque pointer.
type NvmlDevice = *mut std::ffi::c_void;

/// `nvmlMemory_v2_t` (nvml.h), in bytes.
#[repr(C)]
#[derive(Default)]
struct NvmlMemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2`: `NVML_STRUCT_VERSION(Memory, 2)`, the struct's size and version 2 in the
/// top byte; NVML refuses a struct with another version word.
const NVML_MEMORY_V2: c_uint = std::mem::size_of::<NvmlMemoryV2>() as c_uint | (2 << 24);
/// `NVML_GPU_VIRTUALIZATION_MODE_VGPU` of `nvmlGpuVirtualizationMode_t`.
const NVML_GPU_VIRTUALIZATION_MODE_VGPU: c_uint = 2;

/// The NVML functions this step calls, resolved from one loaded library. The fields are plain
/// function pointers; `_lib` keeps the library mapped for as long as they are used.
struct Nvml {
    init: unsafe extern "C" fn() -> NvmlReturn,
    shutdown: unsafe extern "C" fn() -> NvmlReturn,
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> NvmlReturn,
    device_count: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
    handle_by_index: unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> NvmlReturn,
    uuid: unsafe extern "C" fn(NvmlDevice, *mut c_char, c_uint) -> NvmlReturn,
    /// Optional: drivers older than the function lack it (the fact is then unknown).
    virtualization_mode: Option<unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn>,
    memory_v2: Option<unsafe extern "C" fn(NvmlDevice, *mut NvmlMemoryV2) -> NvmlReturn>,
    _lib: libloading::Library,
}

impl Nvml {
    fn load(library: &Path, device: &Path) -> Result<Nvml, GpuError> {
        let name = library.display().to_string();
        // SAFETY: loading NVML runs its initialisers; it is the NVIDIA driver's own library,
        // made to be loaded this way (the unversioned-name lookup is the loader's).
        let lib = unsafe { libloading::Library::new(library.as_os_str()) }.map_err(|e| {
            GpuError::Load {
                devices: device.into(),
                library: name.clone(),
                reason: e.to_string(),
            }
        })?;
        // SAFETY: each symbol is declared with NVML's public C signature (nvml.h).
        unsafe {
            Ok(Nvml {
                init: symbol(&lib, &name, "nvmlInit_v2")?,
                shutdown: symbol(&lib, &name, "nvmlShutdown")?,
                error_string: symbol(&lib, &name, "nvmlErrorString")?,
                driver_version: symbol(&lib, &name, "nvmlSystemGetDriverVersion")?,
                device_count: symbol(&lib, &name, "nvmlDeviceGetCount_v2")?,
                handle_by_index: symbol(&lib, &name, "nvmlDeviceGetHandleByIndex_v2")?,
                uuid: symbol(&lib, &name, "nvmlDeviceGetUUID")?,
                virtualization_mode: symbol(&lib, &name, "nvmlDeviceGetVirtualizationMode").ok(),
                memory_v2: symbol(&lib, &name, "nvmlDeviceGetMemoryInfo_v2").ok(),
                _lib: lib,
            })
        }
    }

    /// Whether the device is a vGPU slice; an error or an older driver counts as not (fails
    /// open, as the Go tool's check: a flaky probe must not take MPS away).
    fn is_vgpu(&self, device: NvmlDevice) -> bool {
        let Some(f) = self.virtualization_mode else {
            return false;
        };
        let mut mode: c_uint = 0;
        // SAFETY: `device` is a handle NVML gave out; `mode` is a valid out pointer.
        let rc = unsafe { f(device, &mut mode) };
        rc == 0 && mode == NVML_GPU_VIRTUALIZATION_MODE_VGPU
    }

    /// The device's usable memory in MiB (v2 total less reserved), or why it is unknown.
    fn usable_memory_mib(&self, device: NvmlDevice, index: u32) -> Result<u64, String> {
        let call = "nvmlDeviceGetMemoryInfo_v2";
        let Some(f) = self.memory_v2 else {
            return Err(format!("the NVML library has no {call}"));
        };
        let mut memory = NvmlMemoryV2 {
            version: NVML_MEMORY_V2,
            ..Default::default()
        };
        // SAFETY: `device` is a handle NVML gave out; `memory` is an `nvmlMemory_v2_t` with
        // its version set, as NVML requires.
        let rc = unsafe { f(device, &mut memory) };
        self.check(call, Some(index), rc)
            .map_err(|e| e.to_string())?;
        match memory.total.checked_sub(memory.reserved) {
            Some(usable) => Ok(usable / (1024 * 1024)),
            None => Err(format!(
                "NVML call {call} (device {index}) reports {} bytes reserved of {} in all",
                memory.reserved, memory.total
            )),
        }
    }

    /// `Ok` for `NVML_SUCCESS`, else an error naming the call with NVML's own error string.
    fn check(
        &self,
        call: &'static str,
        device: Option<u32>,
        rc: NvmlReturn,
    ) -> Result<(), GpuError> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: nvmlErrorString returns a static NUL-terminated string (or NULL).
        let message = unsafe {
            let p = (self.error_string)(rc);
            if p.is_null() {
                "no error string".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(GpuError::Call {
            call,
            device,
            code: rc,
            message,
        })
    }
}

/// Resolve `symbol` as a `T` (a function pointer type matching its C signature).
unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    library: &str,
    symbol: &'static str,
) -> Result<T, GpuError> {
    lib.get::<T>(symbol.as_bytes())
        .map(|s| *s)
        .map_err(|e| GpuError::Symbol {
            library: library.to_string(),
            symbol,
            reason: e.to_string(),
        })
}

/// Write the file atomically into `dir` (mode 0700), the file with mode 0700: a temporary file
/// renamed over `path`. On failure no temporary file remains and `path` is left as it was.
/// `/var/lib/ecs` is writable by the agent, so neither the directory nor the file may be a
/// symlink (see [`ecs_host::files`]).
fn write_info(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), GpuError> {
    let err = |source| GpuError::Write {
        path: path.into(),
        source,
    };
    ecs_host::files::ensure_dir(dir, 0o700).map_err(err)?;
    // An existing directory keeps its mode otherwise; the agent's file is root's alone.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    ecs_host::files::write_atomic(path, bytes, 0o700).map_err(err)
}

/// What `plan` shows: whether the step is on, what it would do, where the file goes. Read-only:
/// it looks at `/dev` and at the file already written, and never loads NVML (loading the
/// driver's library and initialising it is not free of side effects, and can take seconds).
pub fn plan(opts: &GpuOptions) -> serde_json::Value {
    let device = nvidia_device(&opts.dev_dir);
    let tries = opts.tries();
    let window = match tries {
        1 => "one look, no wait".to_string(),
        n => format!("{n} looks {} s apart", opts.wait_interval.as_secs_f64()),
    };
    let step = match (&device, opts.enabled) {
        (_, false) => format!("off ({ENABLE_KEY} is not true)"),
        (Ok(None), true) => format!(
            "no {}/nvidia* now: pre-start and every agent start look for one again ({window}); if none appears, no GPU info is written and {ENABLE_KEY} is left out of the agent's environment (warning)",
            opts.dev_dir.display()
        ),
        (Ok(Some(_)), true) => format!(
            "pre-start queries NVML ({}) and writes the info file",
            opts.library().display()
        ),
        (Err(e), true) => e.to_string(),
    };
    let current = std::fs::read(opts.info_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    serde_json::json!({
        "enabled": opts.enabled,
        "nvidia_device": device.ok().flatten(),
        "nvml_library": opts.library(),
        "info_file": opts.info_file(),
        "device_wait": {
            "seconds": opts.wait.as_secs(),
            "tries": tries,
            "interval_seconds": opts.wait_interval.as_secs_f64(),
        },
        "pre_start": step,
        "queries_nvml": false,
        "current_info": current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::paths::Paths;
    use std::collections::BTreeMap;

    fn opts(dir: &Path, enabled: bool) -> GpuOptions {
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        GpuOptions {
            enabled,
            nvml_library: Some(dir.join("nvml/libnvidia-ml.so.1")),
            dev_dir: dir.join("dev"),
            out_dir: dir.join("var/lib/ecs/gpu"),
            wait: Duration::ZERO,
            wait_interval: Duration::from_millis(10),
            mps_control: dir.join("usr/bin/nvidia-cuda-mps-control"),
        }
    }

    /// A `systemctl` in `<dir>/bin` that prints `state` for `is-enabled nvidia-mps.service`.
    fn fake_systemctl(dir: &Path, state: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let script = dir.join("bin/systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh
[ \"$*\" = \"is-enabled nvidia-mps.service\" ] || exit 9
echo {state}
[ {state} = enabled ] || exit 1
"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// [`super::setup`] on a runtime of its own (the unit tests are synchronous).
    /// Programs (`systemctl`) come from `<dir>/bin` only, next to the test's `<dir>/dev`: none
    /// there, and the MPS unit counts as not enabled.
    fn setup(o: &GpuOptions) -> Result<Outcome, GpuError> {
        let dir = o.dev_dir.parent().unwrap();
        let exec = ecs_host::SystemExec::new(Some(dir.join("bin").into()));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(super::setup(o, &exec))
    }

    /// The fake NVML, copied next to its own scenario file.
    fn fake(dir: &Path, scenario: &str) {
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        fake_nvml::install(&dir.join("nvml"), scenario);
    }

    fn calls(dir: &Path) -> Vec<String> {
        fake_nvml::calls(&dir.join("nvml"))
    }

    fn settings(
        file: &str,
        env: BTreeMap<String, String>,
        root: &str,
    ) -> crate::settings::Settings {
        let cfg = Config::from_parts(&[(PathBuf::from("/etc/ecs/ecs.config"), file.into())]);
        crate::settings::Settings::resolve(env, Paths::under(root), cfg)
    }

    #[test]
    fn options_from_settings() {
        let s = settings(
            "ECS_ENABLE_GPU_SUPPORT=true\n",
            BTreeMap::from([(LIBRARY_KEY.into(), " /opt/nvml/libnvidia-ml.so.1 ".into())]),
            "/tmp/r",
        );
        let o = crate::compose::gpu_options(&s);
        assert_eq!(
            o,
            GpuOptions {
                enabled: true,
                nvml_library: Some("/opt/nvml/libnvidia-ml.so.1".into()),
                dev_dir: "/dev".into(),
                out_dir: "/tmp/r/var/lib/ecs/gpu".into(),
                wait: Duration::from_secs(30),
                wait_interval: Duration::from_secs(3),
                mps_control: "/tmp/r/usr/bin/nvidia-cuda-mps-control".into(),
            }
        );
        assert_eq!(o.tries(), 10, "the Go tool's 10 looks, 3 s apart");
        assert_eq!(
            o.info_file(),
            PathBuf::from("/tmp/r/var/lib/ecs/gpu/nvidia-gpu-info.json")
        );
        let o = crate::compose::gpu_options(&settings(
            "ECS_INIT_GPU_WAIT_SECONDS=7\n",
            BTreeMap::new(),
            "/",
        ));
        assert_eq!((o.wait, o.tries()), (Duration::from_secs(7), 2));
        let o = crate::compose::gpu_options(&settings(
            "",
            BTreeMap::from([(WAIT_KEY.into(), "0".into())]),
            "/",
        ));
        assert_eq!(o.tries(), 1, "0 s: look once");
        assert!(!o.enabled);
        assert_eq!(o.library(), Path::new("libnvidia-ml.so.1"));
    }

    /// The newer Go tool's fields and order (its struct's), memory keyed by UUID in order.
    #[test]
    fn json_matches_go() {
        let mut info = GpuInfo {
            driver_version: "550.54.15".into(),
            gpu_ids: vec!["GPU-b".into(), "GPU-a".into()],
            gpu_memory_mib: Some(BTreeMap::from([
                ("GPU-b".to_string(), 15872),
                ("GPU-a".to_string(), 23808),
            ])),
            mps_control_binary_present: true,
            mps_service_enabled: false,
            has_vgpu: false,
        };
        assert_eq!(
            String::from_utf8(info.to_bytes()).unwrap(),
            r#"{"DriverVersion":"550.54.15","GPUIDs":["GPU-b","GPU-a"],"GPUMemoryMiB":{"GPU-a":23808,"GPU-b":15872},"MpsControlBinaryPresent":true,"MpsServiceEnabled":false,"HasVGPU":false}"#
        );
        info.gpu_memory_mib = None;
        assert_eq!(
            String::from_utf8(info.to_bytes()).unwrap(),
            r#"{"DriverVersion":"550.54.15","GPUIDs":["GPU-b","GPU-a"],"MpsControlBinaryPresent":true,"MpsServiceEnabled":false,"HasVGPU":false}"#
        );
    }

    #[test]
    fn the_printed_state_decides_whether_the_mps_unit_is_enabled() {
        for (printed, want) in [
            ("enabled\n", true),
            ("enabled-runtime\n", true),
            ("disabled\n", false),
            ("static\n", false),
            ("masked\n", false),
            ("", false),
        ] {
            assert_eq!(service_enabled(printed), want, "{printed:?}");
        }
    }

    /// The MPS facts: the binary, the unit (through `systemctl` on the search path), a vGPU
    /// among the GPUs, every GPU's usable memory; none of them fails the step.
    #[test]
    fn mps_facts_and_memory_are_written_and_never_fail_the_step() {
        let dir = tempfile::tempdir().unwrap();
        fake(
            dir.path(),
            "devices=2\ndriver=580.1\nuuid_stem=s\nmemory_mib=24576,768\nvgpu_index=1\n",
        );
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        let o = opts(dir.path(), true);
        std::fs::create_dir_all(o.mps_control.parent().unwrap()).unwrap();
        std::fs::write(&o.mps_control, "").unwrap();
        fake_systemctl(dir.path(), "enabled-runtime");
        setup(&o).unwrap();
        assert_eq!(
            std::fs::read_to_string(o.info_file()).unwrap(),
            r#"{"DriverVersion":"580.1","GPUIDs":["GPU-s-000000000000","GPU-s-000000000001"],"GPUMemoryMiB":{"GPU-s-000000000000":23808,"GPU-s-000000000001":23808},"MpsControlBinaryPresent":true,"MpsServiceEnabled":true,"HasVGPU":true}"#
        );
        // Memory that cannot be read for every GPU is left out, whatever the reason; so is a
        // vGPU check that fails (not a vGPU); a disabled unit is not enabled.
        fake_systemctl(dir.path(), "disabled");
        std::fs::remove_file(&o.mps_control).unwrap();
        for scenario in [
            "devices=2\ndriver=1\nuuid_stem=s\nfail=nvmlDeviceGetMemoryInfo_v2\nfail_index=1\n",
            "devices=2\ndriver=1\nuuid_stem=s\nmemory_mib=512,1024\n",
            "devices=2\ndriver=1\nuuid_stem=s\nvgpu_index=0\nfail=nvmlDeviceGetVirtualizationMode\nmemory_mib=512,1024\n",
        ] {
            fake_nvml::set_scenario(&dir.path().join("nvml"), scenario);
            setup(&o).unwrap();
            assert_eq!(
                std::fs::read_to_string(o.info_file()).unwrap(),
                r#"{"DriverVersion":"1","GPUIDs":["GPU-s-000000000000","GPU-s-000000000001"],"MpsControlBinaryPresent":false,"MpsServiceEnabled":false,"HasVGPU":false}"#,
                "{scenario:?}"
            );
        }
        // After a memory failure on device 0, device 1's memory is not asked for.
        fake_nvml::set_scenario(
            &dir.path().join("nvml"),
            "devices=2\ndriver=1\nfail=nvmlDeviceGetMemoryInfo_v2\nfail_index=0\n",
        );
        let before = calls(dir.path()).len();
        setup(&o).unwrap();
        let memory_calls: Vec<String> = calls(dir.path())[before..]
            .iter()
            .filter(|c| c.starts_with("nvmlDeviceGetMemoryInfo_v2"))
            .cloned()
            .collect();
        assert_eq!(memory_calls, ["nvmlDeviceGetMemoryInfo_v2 0"]);
    }

    #[test]
    fn disabled_and_no_devices_do_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "devices=1\n");
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        assert_eq!(setup(&opts(dir.path(), false)).unwrap(), Outcome::Disabled);
        std::fs::remove_file(dir.path().join("dev/nvidia0")).unwrap();
        std::fs::write(dir.path().join("dev/nvme0"), "").unwrap();
        assert_eq!(setup(&opts(dir.path(), true)).unwrap(), Outcome::NoDevices);
        assert!(calls(dir.path()).is_empty(), "NVML must not be loaded");
        assert!(!dir.path().join("var").exists());
    }

    #[test]
    fn two_gpus_written_atomically_with_modes() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        fake(
            dir.path(),
            "devices=2\ndriver=535.183.01\nuuid_stem=3a9e77c1-7b1e-4d2c-9f00\n",
        );
        std::fs::write(dir.path().join("dev/nvidiactl"), "").unwrap();
        let o = opts(dir.path(), true);
        let out = setup(&o).unwrap();
        let expected = br#"{"DriverVersion":"535.183.01","GPUIDs":["GPU-3a9e77c1-7b1e-4d2c-9f00-000000000000","GPU-3a9e77c1-7b1e-4d2c-9f00-000000000001"],"GPUMemoryMiB":{"GPU-3a9e77c1-7b1e-4d2c-9f00-000000000000":15872,"GPU-3a9e77c1-7b1e-4d2c-9f00-000000000001":15872},"MpsControlBinaryPresent":false,"MpsServiceEnabled":false,"HasVGPU":false}"#;
        assert_eq!(std::fs::read(o.info_file()).unwrap(), expected);
        assert!(matches!(out, Outcome::Written { ref path, .. } if *path == o.info_file()));
        assert_eq!(
            std::fs::metadata(&o.out_dir).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(o.info_file()).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(std::fs::read_dir(&o.out_dir).unwrap().count(), 1);
        assert_eq!(
            calls(dir.path()),
            [
                "nvmlInit_v2",
                "nvmlSystemGetDriverVersion",
                "nvmlDeviceGetCount_v2",
                "nvmlDeviceGetHandleByIndex_v2 0",
                "nvmlDeviceGetUUID 0",
                "nvmlDeviceGetVirtualizationMode 0",
                "nvmlDeviceGetMemoryInfo_v2 0",
                "nvmlDeviceGetHandleByIndex_v2 1",
                "nvmlDeviceGetUUID 1",
                "nvmlDeviceGetVirtualizationMode 1",
                "nvmlDeviceGetMemoryInfo_v2 1",
                "nvmlShutdown",
            ]
        );
    }

    /// Each failure: the error names the call and NVML's string, NVML is shut down when it
    /// was initialised, and no file (nor temporary file) is left.
    #[test]
    fn failures_name_the_call_and_write_nothing() {
        for (scenario, needle, shutdown) in [
            (
                "devices=0\ndriver=1\n",
                "NVML call nvmlDeviceGetCount_v2 reports no GPU devices although",
                true,
            ),
            (
                "devices=2\ndriver=1\nfail=nvmlDeviceGetUUID\nfail_index=1\nfail_code=15\n",
                "NVML call nvmlDeviceGetUUID (device 1) failed: GPU is lost (fake NVML) (NVML error 15)",
                true,
            ),
            (
                "devices=2\nfail=nvmlInit_v2\nfail_code=9\n",
                "NVML call nvmlInit_v2 failed: Driver Not Loaded (fake NVML) (NVML error 9)",
                false,
            ),
            (
                "devices=2\nfail=nvmlSystemGetDriverVersion\n",
                "NVML call nvmlSystemGetDriverVersion failed: Unknown Error (fake NVML) (NVML error 999)",
                true,
            ),
            (
                "devices=1\ndriver=\n",
                "NVML call nvmlSystemGetDriverVersion returned an empty string",
                true,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fake(dir.path(), scenario);
            std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
            let o = opts(dir.path(), true);
            let err = setup(&o).unwrap_err().to_string();
            assert!(err.contains(needle), "{scenario:?}: {err}");
            assert_eq!(
                calls(dir.path()).last().map(String::as_str) == Some("nvmlShutdown"),
                shutdown,
                "{scenario:?}: {:?}",
                calls(dir.path())
            );
            assert!(!o.info_file().exists(), "{scenario:?}");
            let left = std::fs::read_dir(&o.out_dir).map(|d| d.count()).unwrap_or(0);
            assert_eq!(left, 0, "{scenario:?}: files left in {}", o.out_dir.display());
        }
    }

    #[test]
    fn a_failure_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "devices=1\ndriver=1.0\n");
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        let o = opts(dir.path(), true);
        setup(&o).unwrap();
        let before = std::fs::read(o.info_file()).unwrap();
        fake_nvml::set_scenario(
            &dir.path().join("nvml"),
            "devices=1\nfail=nvmlDeviceGetCount_v2\n",
        );
        setup(&o).unwrap_err();
        assert_eq!(std::fs::read(o.info_file()).unwrap(), before);
    }

    #[test]
    fn missing_library_and_symbol_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path(), true);
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        o.nvml_library = Some(dir.path().join("nowhere/libnvidia-ml.so.1"));
        let err = setup(&o).unwrap_err().to_string();
        assert!(
            err.contains("but the NVML library")
                && err.contains("nowhere/libnvidia-ml.so.1 cannot be loaded")
                && err.contains("ECS_INIT_NVML_LIBRARY"),
            "{err}"
        );
        // A shared object without the NVML functions (here: the C library itself).
        o.nvml_library = Some("libc.so.6".into());
        let err = setup(&o).unwrap_err().to_string();
        assert!(
            err.starts_with("the NVML library libc.so.6 has no function nvmlInit_v2"),
            "{err}"
        );
    }

    /// A driver that loads late: the device node appears during the wait and the step goes on
    /// as if it had been there; one that never comes ends the wait after the tries, with
    /// nothing written and NVML never loaded.
    #[test]
    fn a_late_device_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "devices=1\ndriver=2.0\n");
        let mut o = opts(dir.path(), true);
        o.wait = Duration::from_secs(5);
        o.wait_interval = Duration::from_millis(50);
        assert_eq!(o.tries(), 100);
        let node = dir.path().join("dev/nvidia0");
        let late = {
            let node = node.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::write(node, "").unwrap();
            })
        };
        let t = std::time::Instant::now();
        let out = setup(&o).unwrap();
        late.join().unwrap();
        assert!(matches!(out, Outcome::Written { .. }), "{out:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

        std::fs::remove_file(&node).unwrap();
        std::fs::remove_dir_all(&o.out_dir).unwrap();
        let before = calls(dir.path()).len();
        o.wait = Duration::from_millis(200);
        let t = std::time::Instant::now();
        assert_eq!(setup(&o).unwrap(), Outcome::NoDevices);
        // 4 looks, 3 waits of 50 ms between them.
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(
            calls(dir.path()).len(),
            before,
            "NVML loaded without a device"
        );
        assert!(!o.out_dir.exists());
    }

    #[test]
    fn plan_is_read_only() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "devices=1\n");
        let o = opts(dir.path(), true);
        let v = plan(&o);
        assert_eq!(v["enabled"], true);
        let step = v["pre_start"].as_str().unwrap();
        assert!(
            step.starts_with("no ")
                && step.contains("look for one again (one look, no wait)")
                && step.contains("ECS_ENABLE_GPU_SUPPORT is left out of the agent's environment"),
            "{step}"
        );
        assert_eq!(v["device_wait"]["tries"], 1);
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        let v = plan(&o);
        assert_eq!(
            v["nvidia_device"],
            dir.path().join("dev/nvidia0").display().to_string()
        );
        assert_eq!(v["info_file"], o.info_file().display().to_string());
        assert_eq!(v["queries_nvml"], false);
        assert!(v["current_info"].is_null());
        assert!(calls(dir.path()).is_empty());
        assert!(!o.out_dir.exists());
    }
}
