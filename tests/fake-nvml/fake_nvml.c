/*
 * A fake NVIDIA Management Library for the GPU tests (CI has no GPU).
 *
 * Built by build.rs into a shared object named libnvidia-ml.so.1. It exports the NVML
 * functions amazon-ecs-init calls, with the public NVML signatures, and answers according to a
 * scenario file that sits next to the loaded library: "<path of this .so>.scenario", lines of
 * key=value:
 *
 *   devices=N        how many GPUs nvmlDeviceGetCount_v2 reports (default 0)
 *   driver=TEXT      what nvmlSystemGetDriverVersion returns (default "0.0")
 *   uuid_stem=TEXT   device N's UUID is "GPU-<uuid_stem>-<N as 12 hex digits>"
 *                    (default 00000000-0000-4000-8000)
 *   memory_mib=T,R   every device's nvmlDeviceGetMemoryInfo_v2 total and reserved, in MiB
 *                    (default 16384,512: 15872 MiB usable)
 *   vgpu_index=N     device N is a vGPU slice (nvmlDeviceGetVirtualizationMode answers
 *                    NVML_GPU_VIRTUALIZATION_MODE_VGPU; every other device NONE)
 *   fail=CALL        make CALL (e.g. nvmlInit_v2) return fail_code instead of success
 *   fail_index=N     ... only for device N (per-device calls); default: every device
 *   fail_code=N      the nvmlReturn_t to return (default 999, NVML_ERROR_UNKNOWN)
 *
 * Because the scenario is found through the library's own path, every test copies the library
 * into its own directory and tests run in parallel without sharing state. Every call is
 * appended to "<path of this .so>.calls", one line each ("name" or "name index"), so tests can
 * check the order of calls and that NVML was shut down.
 *
 * Calls made before a successful nvmlInit_v2 (or after nvmlShutdown) return
 * NVML_ERROR_UNINITIALIZED, as the real library does.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
struct fake_device { unsigned int index; };
typedef struct fake_device *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 64

static struct fake_device devices[MAX_DEVICES];
static int initialized;

struct scenario {
    unsigned int devices;
    char driver[128];
    char uuid_stem[64];
    char fail[64];
    long fail_index; /* -1: every device */
    int fail_code;
    unsigned long long memory_total_mib, memory_reserved_mib;
    long vgpu_index; /* -1: none */
};

/* nvml.h's nvmlMemory_v2_t, and its version word (NVML_STRUCT_VERSION(Memory, 2)). */
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
#define NVML_GPU_VIRTUALIZATION_MODE_NONE 0
#define NVML_GPU_VIRTUALIZATION_MODE_VGPU 2

/* The path this shared object was loaded from. */
static const char *self_path(void)
{
    Dl_info info;
    if (dladdr((void *)&self_path, &info) == 0 || info.dli_fname == NULL)
        return "libnvidia-ml.so.1";
    return info.dli_fname;
}

static void side_file(char *buf, size_t len, const char *suffix)
{
    snprintf(buf, len, "%s.%s", self_path(), suffix);
}

static void load(struct scenario *s)
{
    char path[4096], line[256];
    FILE *f;

    memset(s, 0, sizeof(*s));
    strcpy(s->driver, "0.0");
    strcpy(s->uuid_stem, "00000000-0000-4000-8000");
    s->fail_index = -1;
    s->fail_code = NVML_ERROR_UNKNOWN;
    s->memory_total_mib = 16384;
    s->memory_reserved_mib = 512;
    s->vgpu_index = -1;
    side_file(path, sizeof(path), "scenario");
    f = fopen(path, "r");
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *eq = strchr(line, '=');
        char *value;
        line[strcspn(line, "\r\n")] = '\0';
        if (eq == NULL)
            continue;
        *eq = '\0';
        value = eq + 1;
        if (strcmp(line, "devices") == 0) {
            s->devices = (unsigned int)strtoul(value, NULL, 10);
            if (s->devices > MAX_DEVICES)
                s->devices = MAX_DEVICES;
        } else if (strcmp(line, "driver") == 0) {
            snprintf(s->driver, sizeof(s->driver), "%s", value);
        } else if (strcmp(line, "uuid_stem") == 0) {
            snprintf(s->uuid_stem, sizeof(s->uuid_stem), "%s", value);
        } else if (strcmp(line, "memory_mib") == 0) {
            char *comma = strchr(value, ',');
            s->memory_total_mib = strtoull(value, NULL, 10);
            s->memory_reserved_mib = comma ? strtoull(comma + 1, NULL, 10) : 0;
        } else if (strcmp(line, "vgpu_index") == 0) {
            s->vgpu_index = strtol(value, NULL, 10);
        } else if (strcmp(line, "fail") == 0) {
            snprintf(s->fail, sizeof(s->fail), "%s", value);
        } else if (strcmp(line, "fail_index") == 0) {
            s->fail_index = strtol(value, NULL, 10);
        } else if (strcmp(line, "fail_code") == 0) {
            s->fail_code = (int)strtol(value, NULL, 10);
        }
    }
    fclose(f);
}

static void record(const char *call, long index)
{
    char path[4096];
    FILE *f;

    side_file(path, sizeof(path), "calls");
    f = fopen(path, "a");
    if (f == NULL)
        return;
    if (index >= 0)
        fprintf(f, "%s %ld\n", call, index);
    else
        fprintf(f, "%s\n", call);
    fclose(f);
}

/* Nonzero when the scenario makes this call (for this device) fail. */
static int failing(const struct scenario *s, const char *call, long index)
{
    if (strcmp(s->fail, call) != 0)
        return 0;
    return s->fail_index < 0 || s->fail_index == index;
}

nvmlReturn_t nvmlInit_v2(void)
{
    struct scenario s;
    load(&s);
    record("nvmlInit_v2", -1);
    if (failing(&s, "nvmlInit_v2", -1))
        return s.fail_code;
    initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    struct scenario s;
    load(&s);
    record("nvmlShutdown", -1);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    initialized = 0;
    if (failing(&s, "nvmlShutdown", -1))
        return s.fail_code;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    /* Marked as the fake's, so tests can tell NVML's text from any text of the caller's. */
    switch (result) {
    case NVML_SUCCESS: return "Success (fake NVML)";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized (fake NVML)";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument (fake NVML)";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size (fake NVML)";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded (fake NVML)";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost (fake NVML)";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch (fake NVML)";
    default: return "Unknown Error (fake NVML)";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    struct scenario s;
    load(&s);
    record("nvmlSystemGetDriverVersion", -1);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (version == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (failing(&s, "nvmlSystemGetDriverVersion", -1))
        return s.fail_code;
    if (strlen(s.driver) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(version, s.driver);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    struct scenario s;
    load(&s);
    record("nvmlDeviceGetCount_v2", -1);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (failing(&s, "nvmlDeviceGetCount_v2", -1))
        return s.fail_code;
    *count = s.devices;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    struct scenario s;
    load(&s);
    record("nvmlDeviceGetHandleByIndex_v2", (long)index);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= s.devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (failing(&s, "nvmlDeviceGetHandleByIndex_v2", (long)index))
        return s.fail_code;
    devices[index].index = index;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    struct scenario s;
    char text[96];
    long index;

    load(&s);
    if (device < &devices[0] || device >= &devices[MAX_DEVICES]) {
        record("nvmlDeviceGetUUID", -1);
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    index = (long)(device - &devices[0]);
    record("nvmlDeviceGetUUID", index);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || (unsigned int)index >= s.devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (failing(&s, "nvmlDeviceGetUUID", index))
        return s.fail_code;
    snprintf(text, sizeof(text), "GPU-%s-%012lx", s.uuid_stem, (unsigned long)index);
    if (strlen(text) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(uuid, text);
    return NVML_SUCCESS;
}

/* The index of a handle this library gave out, or -1 (recorded as "CALL" alone). */
static long handle_index(nvmlDevice_t device)
{
    if (device < &devices[0] || device >= &devices[MAX_DEVICES])
        return -1;
    return (long)(device - &devices[0]);
}

nvmlReturn_t nvmlDeviceGetVirtualizationMode(nvmlDevice_t device, int *mode)
{
    struct scenario s;
    long index = handle_index(device);

    load(&s);
    record("nvmlDeviceGetVirtualizationMode", index);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (index < 0 || mode == NULL || (unsigned long)index >= s.devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (failing(&s, "nvmlDeviceGetVirtualizationMode", index))
        return s.fail_code;
    *mode = index == s.vgpu_index ? NVML_GPU_VIRTUALIZATION_MODE_VGPU : NVML_GPU_VIRTUALIZATION_MODE_NONE;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    struct scenario s;
    long index = handle_index(device);
    const unsigned long long mib = 1024ull * 1024ull;

    load(&s);
    record("nvmlDeviceGetMemoryInfo_v2", index);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (index < 0 || memory == NULL || (unsigned long)index >= s.devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* The real library checks the caller's struct version, as here. */
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (failing(&s, "nvmlDeviceGetMemoryInfo_v2", index))
        return s.fail_code;
    memory->total = s.memory_total_mib * mib;
    memory->reserved = s.memory_reserved_mib * mib;
    memory->used = 0;
    memory->free = memory->total > memory->reserved ? memory->total - memory->reserved : 0;
    return NVML_SUCCESS;
}
