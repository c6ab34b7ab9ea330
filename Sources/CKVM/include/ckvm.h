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

// Where the MMIO data bytes sit in struct kvm_run (inside an anonymous union Swift cannot take offsets into).
#include <stddef.h>
static inline size_t kiln_kvm_run_mmio_data_offset(void) { return offsetof(struct kvm_run, mmio.data); }

static const unsigned int KILN_KVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;

#endif
