// The KVM UAPI for Swift: linux/kvm.h plus the ioctl request numbers, which
// Swift cannot compute from the _IO* macros itself.
#ifndef KILN_CKVM_H
#define KILN_CKVM_H

#include <linux/kvm.h>
#include <asm/kvm.h>

// System ioctls.
static const unsigned long KILN_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long KILN_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long KILN_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long KILN_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long KILN_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;

// VM ioctls.
static const unsigned long KILN_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long KILN_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long KILN_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long KILN_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long KILN_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long KILN_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long KILN_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long KILN_KVM_IRQFD = KVM_IRQFD;
static const unsigned long KILN_KVM_IOEVENTFD = KVM_IOEVENTFD;

// vCPU ioctls.
static const unsigned long KILN_KVM_RUN = KVM_RUN;
static const unsigned long KILN_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long KILN_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long KILN_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long KILN_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long KILN_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long KILN_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long KILN_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long KILN_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long KILN_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long KILN_KVM_SET_LAPIC = KVM_SET_LAPIC;

// Snapshot state: everything KVM keeps that a restore must put back.
static const unsigned long KILN_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
static const unsigned long KILN_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long KILN_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long KILN_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long KILN_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long KILN_KVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long KILN_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long KILN_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long KILN_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long KILN_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long KILN_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long KILN_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long KILN_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long KILN_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long KILN_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long KILN_KVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long KILN_KVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long KILN_KVM_SET_CLOCK = KVM_SET_CLOCK;

// Where the MMIO data bytes sit in struct kvm_run (inside an anonymous union Swift cannot take offsets into).
#include <stddef.h>
static inline size_t kiln_kvm_run_mmio_data_offset(void) { return offsetof(struct kvm_run, mmio.data); }

static const unsigned int KILN_KVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;

#endif
