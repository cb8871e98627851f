//! Which adapters `hoa serve --adapters all` takes (`hoa::gpu::left_out_of_all`), on made-up
//! adapter lists: no device needed.

use hoa::gpu::left_out_of_all;
use wgpu::{AdapterInfo, Backend, DeviceType};

fn adapter(name: &str, device: u32, kind: DeviceType, backend: Backend) -> AdapterInfo {
    AdapterInfo {
        name: name.into(),
        vendor: 0x10de,
        device,
        ..AdapterInfo::new(kind, backend)
    }
}

/// The indices `all` takes.
fn taken(list: &[AdapterInfo]) -> Vec<usize> {
    (0..list.len())
        .filter(|&i| left_out_of_all(list, i).is_none())
        .collect()
}

#[test]
fn all_takes_each_hardware_chip_once() {
    use {Backend::*, DeviceType::*};
    // Two identical GPUs on Vulkan (both kept), the same through DX12 and GL, and a software one.
    let list = [
        adapter("H100", 1, DiscreteGpu, Vulkan),
        adapter("H100", 1, DiscreteGpu, Vulkan),
        adapter("H100", 1, DiscreteGpu, Dx12),
        adapter("H100/PCIe/SSE2", 0, DiscreteGpu, Gl),
        adapter("llvmpipe", 0, Cpu, Vulkan),
    ];
    assert_eq!(taken(&list), [0, 1]);
    assert!(left_out_of_all(&list, 2)
        .unwrap()
        .contains("another backend"));
    assert!(left_out_of_all(&list, 3).unwrap().contains("GL"));
    assert!(left_out_of_all(&list, 4).unwrap().contains("software"));
    // A chip only DX12 shows is taken.
    let list = [
        adapter("A", 1, DiscreteGpu, Vulkan),
        adapter("B", 2, IntegratedGpu, Dx12),
    ];
    assert_eq!(taken(&list), [0, 1]);
}

#[test]
fn all_falls_back_to_what_there_is() {
    use {Backend::*, DeviceType::*};
    // This machine: lavapipe through Vulkan and llvmpipe through GL, both software.
    let list = [
        adapter("llvmpipe", 0, Cpu, Vulkan),
        adapter("llvmpipe", 0, Cpu, Gl),
    ];
    assert_eq!(taken(&list), [0]);
    // GL alone, software alone: taken.
    assert_eq!(taken(&list[1..]), [0]);
    assert_eq!(taken(&[]), Vec::<usize>::new());
}
