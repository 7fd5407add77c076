"""Choosing devices by UUID and by CUDA ordinal: `device_for_uuid`, `device_for_cuda`,
`cuda_ordinal`. The UUID forms run everywhere; the CUDA ones compare with torch's view of the
GPUs where CUDA is present, and check the typed error where it is not."""

import pytest

import lava_flow
from conftest import cuda_reason, import_or_need


def test_every_device_is_found_by_its_uuid_in_every_written_form(allocator):
    devices = allocator.devices()
    assert devices, "at least one Vulkan device"
    for d in devices:
        uuid = d["uuid"]
        assert allocator.device_for_uuid(uuid) == d["device_id"]
        assert allocator.device_for_uuid("GPU-" + uuid.upper()) == d["device_id"], "nvidia-smi's form"
        assert allocator.device_for_uuid(uuid.replace("-", "")) == d["device_id"]
        assert allocator.device_for_uuid(bytes.fromhex(uuid.replace("-", ""))) == d["device_id"]


def test_malformed_and_unknown_uuids_are_typed_errors(allocator):
    with pytest.raises(lava_flow.InvalidArgumentError, match="8 hex digits, 32 expected"):
        allocator.device_for_uuid("6d657361")
    with pytest.raises(lava_flow.InvalidArgumentError, match="not a hex digit"):
        allocator.device_for_uuid("zz" * 16)
    with pytest.raises(lava_flow.InvalidArgumentError, match="16 bytes, not 15"):
        allocator.device_for_uuid(bytes(15))
    known = {d["uuid"] for d in allocator.devices()}
    unknown = next(u for u in ("ff" * 16, "ee" * 16) if f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}" not in known)
    with pytest.raises(lava_flow.UnsupportedError, match="no Vulkan device has the UUID"):
        allocator.device_for_uuid(unknown)


def test_cuda_ordinals_and_vulkan_devices_agree_by_uuid(allocator):
    reason = cuda_reason(allocator)
    if reason is not None:
        # No CUDA for device 0 (the CPU tier): the CUDA side of the mapping is a typed error.
        with pytest.raises(lava_flow.UnsupportedError):
            allocator.cuda_ordinal(0)
        with pytest.raises(lava_flow.UnsupportedError):
            allocator.device_for_cuda(0)
        return
    torch = import_or_need("torch")
    count = torch.cuda.device_count()
    assert count >= 1
    for ordinal in range(count):
        device_id = allocator.device_for_cuda(ordinal)
        assert allocator.cuda_ordinal(device_id) == ordinal
        # torch names the same GPU by the same UUID.
        assert allocator.device_for_uuid(str(torch.cuda.get_device_properties(ordinal).uuid)) == device_id
        buffer = allocator.allocate(4096, lava_flow.MemoryLocation.GpuVulkan(device_id=device_id))
        assert buffer.__dlpack_device__() == (2, ordinal), "DLPack names the CUDA ordinal"
    with pytest.raises(lava_flow.InvalidArgumentError, match=f"no CUDA device {count}"):
        allocator.device_for_cuda(count)
