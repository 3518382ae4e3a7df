// SPDX-License-Identifier: GPL-2.0
/*
 * sysgenid: the System Generation ID device, /dev/sysgenid.
 *
 * Written for the sysgenid-async project from the documented behaviour of the
 * v4 patch (Documentation/misc-devices/sysgenid.rst) and of the shipped v8
 * driver. One module speaks both ABIs; the personality is chosen at load time:
 *
 *     insmod sysgenid.ko            # v4: ioctl magic 0x2d, every fd a watcher
 *     insmod sysgenid.ko abi=8      # v8: ioctl magic 0xE4, opt-in tracking
 *
 * Built with SYSGENID_FIXED_ABI=4 or 8 (make FIXED_ABI=8), the module has one
 * personality and no parameter, as a distribution's driver would.
 *
 * The "flavour" parameter reproduces the observed behaviour of the drivers that
 * ship, so that clients can be tested against them:
 *
 *     insmod sysgenid.ko flavour=amazon-linux   # Amazon Linux's v8 driver
 *     insmod sysgenid.ko flavour=v4-patch       # the v4 patch as posted
 *
 * The default flavour, sysgenid-async, is this module's own, stricter behaviour.
 *
 * On kernels with CONFIG_VMGENID the module follows the hypervisor's VM generation
 * (restores and clones) through the vmfork notifier; vmfork=0 turns that off, and the
 * device's read-only attribute /sys/class/misc/sysgenid/backend tells which it is.
 *
 * Locking: one spinlock guards the generation, every file's acked value and
 * tracking flag, and the outdated count. Every caller runs in process context
 * (file operations, and the vmfork notifier, a blocking chain called from the
 * ACPI notify workqueue), so plain spin_lock() is enough. Nothing sleeps while
 * holding it. Wait conditions re-take the lock to read consistent state; every
 * state change that can satisfy a condition wakes the queues after unlocking.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/jiffies.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/notifier.h>
#include <linux/poll.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/user_namespace.h>
#include <linux/version.h>
#include <linux/wait.h>

#include "uapi/sysgenid.h"
#include "sysgenid-flavours.h"

#ifdef SYSGENID_FIXED_ABI
/* A build with one personality and no parameter, like a distribution's driver. */
static const int abi = SYSGENID_FIXED_ABI;
#else
/* 0 until loaded: then the flavour's ABI, or 4 for the module's own flavour */
static int abi;
module_param(abi, int, 0444);
MODULE_PARM_DESC(abi, "ABI personality: 4 (documented v4, the default) or 8 (shipped v8)");
#endif

static char *flavour = "sysgenid-async";
module_param(flavour, charp, 0444);
MODULE_PARM_DESC(flavour, "behave as sysgenid-async (default), amazon-linux or v4-patch");

static const struct sg_flavour *sg_flavour = &sg_flavours[0];

static bool vmfork = true;
module_param(vmfork, bool, 0444);
MODULE_PARM_DESC(vmfork, "bump on the hypervisor's VM generation change (kernels with CONFIG_VMGENID; default on)");

/* What drives the generation besides userspace: "vmgenid", "none" or "disabled". */
static const char *sg_backend = "none";

/* /sys/class/misc/sysgenid/backend: an attribute of the device, not a parameter */
static ssize_t backend_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", sg_backend);
}
static DEVICE_ATTR_RO(backend);

static struct attribute *sg_attrs[] = {
	&dev_attr_backend.attr,
	NULL,
};
ATTRIBUTE_GROUPS(sg);

/* vm_flags became read-only, with helpers, in 6.3 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define sg_vm_flags_set(vma, f)   vm_flags_set((vma), (f))
#define sg_vm_flags_clear(vma, f) vm_flags_clear((vma), (f))
#else
#define sg_vm_flags_set(vma, f)   ((vma)->vm_flags |= (f))
#define sg_vm_flags_clear(vma, f) ((vma)->vm_flags &= ~(f))
#endif

struct sg_watcher {
	struct list_head node;	/* in sg_state.watchers */
	u32 acked;		/* the generation this file last confirmed */
	bool tracked;		/* counts towards the outdated total */
};

static struct {
	u32 *page;		/* page[0] is the live generation, mapped read-only */
	spinlock_t lock;
	struct list_head watchers;
	unsigned int outdated;	/* tracked watchers with acked != generation */
	wait_queue_head_t change_wq;	/* readers and pollers */
	wait_queue_head_t outdated_wq;	/* WAIT_WATCHERS callers */
} sg;

static inline u32 sg_generation(void)
{
	return READ_ONCE(sg.page[0]);
}

static inline bool sg_is_v8(void)
{
	return abi == 8;
}

/* Caller holds sg.lock. */
static inline bool sg_watcher_outdated_locked(const struct sg_watcher *w)
{
	return w->acked != sg.page[0];
}

static bool sg_watcher_outdated(struct sg_watcher *w)
{
	bool ret;

	spin_lock(&sg.lock);
	ret = sg_watcher_outdated_locked(w);
	spin_unlock(&sg.lock);
	return ret;
}

/* Caller holds sg.lock. max(min_gen, current + 1), as the flavour computes it. */
static u32 sg_next_generation_locked(u32 min_gen)
{
	/* u32 arithmetic: 0xffffffff + 1 wraps to 0 */
	u32 next = sg.page[0] + 1;

	if (sg_flavour->signed_counter)
		return (u32)max_t(s32, (s32)min_gen, (s32)next);
	return max_t(u32, min_gen, next);
}

/*
 * Recounting the outdated watchers from the list keeps the total exact even
 * when a wrapped value meets an old ack.
 */
static void sg_bump(u32 min_gen)
{
	struct sg_watcher *w;
	unsigned int outdated = 0;
	u32 next;

	spin_lock(&sg.lock);
	next = sg_next_generation_locked(min_gen);
	WRITE_ONCE(sg.page[0], next);
	list_for_each_entry(w, &sg.watchers, node)
		if (w->tracked && (w->acked != next || sg_flavour->recount_all_tracked))
			outdated++;
	sg.outdated = outdated;
	spin_unlock(&sg.lock);

	wake_up_interruptible_all(&sg.change_wq);
	/* waiters must learn that they became outdated themselves */
	wake_up_interruptible_all(&sg.outdated_wq);
}

#if IS_ENABLED(CONFIG_VMGENID)
/*
 * The vmgenid driver calls the vmfork chain from add_vmfork_randomness(), after the
 * kernel's RNG has been reseeded for the new VM: anything a watcher draws from the
 * kernel once it sees the new generation is already unique to this clone.
 */
static int sg_vmfork_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	sg_bump(0);
	pr_info("VM generation changed, generation %u\n", sg_generation());
	return NOTIFY_DONE;
}

static struct notifier_block sg_vmfork_nb = {
	.notifier_call = sg_vmfork_notify,
};
#endif

static void sg_backend_start(void)
{
	if (!vmfork) {
		sg_backend = "disabled";
		pr_info("VM generation backend disabled (vmfork=0)\n");
		return;
	}
#if IS_ENABLED(CONFIG_VMGENID)
	if (register_random_vmfork_notifier(&sg_vmfork_nb) == 0) {
		sg_backend = "vmgenid";
		pr_info("following the VM generation (vmgenid)\n");
		return;
	}
	pr_notice("could not register for VM generation changes\n");
#else
	pr_info("no VM generation backend: this kernel has no CONFIG_VMGENID\n");
#endif
}

static void sg_backend_stop(void)
{
#if IS_ENABLED(CONFIG_VMGENID)
	if (strcmp(sg_backend, "vmgenid") == 0)
		unregister_random_vmfork_notifier(&sg_vmfork_nb);
#endif
	sg_backend = "none";
}

static int sg_open(struct inode *inode, struct file *file)
{
	struct sg_watcher *w = kzalloc(sizeof(*w), GFP_KERNEL);

	if (!w)
		return -ENOMEM;
	/* v4: every open file is a watcher; v8: only after SET_WATCHER_TRACKING(1) */
	w->tracked = !sg_is_v8();
	spin_lock(&sg.lock);
	w->acked = sg.page[0];
	list_add(&w->node, &sg.watchers);
	spin_unlock(&sg.lock);
	file->private_data = w;
	return stream_open(inode, file);
}

static int sg_release(struct inode *inode, struct file *file)
{
	struct sg_watcher *w = file->private_data;
	bool wake = false;

	spin_lock(&sg.lock);
	list_del(&w->node);
	if (w->tracked && sg_watcher_outdated_locked(w)) {
		sg.outdated--;
		wake = sg.outdated == 0;
	}
	spin_unlock(&sg.lock);
	if (wake)
		wake_up_interruptible_all(&sg.outdated_wq);
	kfree(w);
	return 0;
}

static ssize_t sg_read(struct file *file, char __user *buf, size_t len,
		       loff_t *ppos)
{
	struct sg_watcher *w = file->private_data;
	u32 gen;
	int ret;

	if (len == 0)
		return 0;
	if (len < sizeof(u32))
		return -EINVAL;

	for (;;) {
		spin_lock(&sg.lock);
		gen = sg.page[0];
		if (w->acked != gen) {
			spin_unlock(&sg.lock);
			break;
		}
		spin_unlock(&sg.lock);
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(sg.change_wq,
					       sg_watcher_outdated(w));
		if (ret)
			return ret;
	}
	/* reading does not acknowledge: only write() does */
	if (copy_to_user(buf, &gen, sizeof(gen)))
		return -EFAULT;
	return sizeof(gen);
}

static ssize_t sg_write(struct file *file, const char __user *buf,
			size_t len, loff_t *ppos)
{
	struct sg_watcher *w = file->private_data;
	bool wake = false;
	u32 gen;

	if (len != sizeof(u32))
		return sg_is_v8() ? -ENOBUFS : -EINVAL;
	if (copy_from_user(&gen, buf, sizeof(gen)))
		return -EFAULT;

	spin_lock(&sg.lock);
	if (gen != sg.page[0]) {
		spin_unlock(&sg.lock);
		return -EINVAL;
	}
	if (w->acked != gen) {
		w->acked = gen;
		if (w->tracked) {
			sg.outdated--;
			wake = sg.outdated == 0;
		}
	}
	spin_unlock(&sg.lock);
	if (wake)
		wake_up_interruptible_all(&sg.outdated_wq);
	return sizeof(gen);
}

static __poll_t sg_poll(struct file *file, poll_table *wait)
{
	struct sg_watcher *w = file->private_data;

	poll_wait(file, &sg.change_wq, wait);
	return sg_watcher_outdated(w) ? EPOLLIN | EPOLLRDNORM : 0;
}

static bool sg_wait_done(struct sg_watcher *w)
{
	bool done;

	spin_lock(&sg.lock);
	done = sg.outdated == 0 || sg_watcher_outdated_locked(w);
	spin_unlock(&sg.lock);
	return done;
}

/*
 * WAIT_WATCHERS(ms), ms == 0 meaning no timeout. Returns 0 once no tracked
 * watcher is outdated. -EINTR when the caller is (or becomes) outdated, and
 * on a signal. A timeout gives -EINTR on v4 and -ETIME on v8.
 *
 * A signal gives -EINTR rather than -ERESTARTSYS: a restarted wait would start
 * its timeout again. The shipped drivers restart; their flavours do too.
 */
static long sg_wait_watchers(struct sg_watcher *w, unsigned long timeout_ms)
{
	long on_signal = sg_flavour->restart_on_signal ? -ERESTARTSYS : -EINTR;
	long ret;

	if (sg_watcher_outdated(w))
		return -EINTR;
	if (timeout_ms == 0) {
		ret = wait_event_interruptible(sg.outdated_wq, sg_wait_done(w));
		if (ret)
			return on_signal;
	} else {
		ret = wait_event_interruptible_timeout(sg.outdated_wq,
				sg_wait_done(w),
				msecs_to_jiffies(min_t(unsigned long, timeout_ms,
						       UINT_MAX)));
		if (ret < 0)
			return on_signal;
		if (ret == 0 && !sg_wait_done(w))
			return sg_is_v8() ? -ETIME : -EINTR;
	}
	return sg_watcher_outdated(w) ? -EINTR : 0;
}

static long sg_set_tracking(struct sg_watcher *w, unsigned long on)
{
	bool wake = false;

	if (on > 1 && !sg_flavour->tracking_any_nonzero)
		return -EINVAL;
	on = !!on;
	spin_lock(&sg.lock);
	if (w->tracked != !!on) {
		w->tracked = on;
		if (sg_watcher_outdated_locked(w)) {
			if (on) {
				sg.outdated++;
			} else {
				sg.outdated--;
				wake = sg.outdated == 0;
			}
		}
	}
	spin_unlock(&sg.lock);
	if (wake)
		wake_up_interruptible_all(&sg.outdated_wq);
	return 0;
}

/*
 * FORCE_GEN_UPDATE / TRIGGER_GEN_UPDATE. The generation is machine-wide, so the
 * capability counts in the initial user namespace: in the caller's own (as the
 * shipped drivers check it), anyone who can create a user namespace could fake a
 * restore for every service on the machine.
 */
static long sg_trigger(unsigned long min_gen)
{
	if (!checkpoint_restore_ns_capable(sg_flavour->caller_userns_capability ?
					   current_user_ns() : &init_user_ns))
		return -EACCES;
	sg_bump((u32)min_gen);
	return 0;
}

static long sg_outdated_count(void)
{
	long count;

	spin_lock(&sg.lock);
	count = sg.outdated;
	spin_unlock(&sg.lock);
	return count;
}

static long sg_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct sg_watcher *w = file->private_data;

	if (sg_is_v8()) {
		switch (cmd) {
		case SYSGENID_V8_SET_WATCHER_TRACKING:
			return sg_set_tracking(w, arg);
		case SYSGENID_V8_WAIT_WATCHERS:
			return sg_wait_watchers(w, arg);
		case SYSGENID_V8_TRIGGER_GEN_UPDATE:
			return sg_trigger(arg);
		}
	} else {
		switch (cmd) {
		case SYSGENID_GET_OUTDATED_WATCHERS:
			return sg_outdated_count();
		case SYSGENID_WAIT_WATCHERS:
			return sg_wait_watchers(w, arg);
		case SYSGENID_FORCE_GEN_UPDATE:
			return sg_trigger(arg);
		}
	}
	/*
	 * EINVAL, not the usual ENOTTY: the shipped drivers answer so, and
	 * clients tell the ABIs apart by it (a v4 ioctl on a v8 driver fails
	 * with EINVAL).
	 */
	return -EINVAL;
}

static int sg_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long size = vma->vm_end - vma->vm_start;

	if (vma->vm_pgoff != 0 || size > PAGE_SIZE)
		return -EINVAL;
	if (vma->vm_flags & VM_WRITE)
		return -EPERM;
	/* MAP_SHARED only; VM_SHARED itself is cleared for read-only files */
	if (!(vma->vm_flags & VM_MAYSHARE) && !sg_flavour->private_mapping)
		return -EINVAL;
	/* no later mprotect(PROT_WRITE) either */
	sg_vm_flags_clear(vma, VM_MAYWRITE);
	sg_vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	return remap_pfn_range(vma, vma->vm_start,
			       page_to_pfn(virt_to_page(sg.page)),
			       PAGE_SIZE, vma->vm_page_prot);
}

static const struct file_operations sg_fops = {
	.owner		= THIS_MODULE,
	.open		= sg_open,
	.release	= sg_release,
	.read		= sg_read,
	.write		= sg_write,
	.poll		= sg_poll,
	.unlocked_ioctl	= sg_ioctl,
	/* every argument is an integer, never a pointer: no translation */
	.compat_ioctl	= sg_ioctl,
	.mmap		= sg_mmap,
	/* no .llseek: stream_open() makes the file unseekable (ESPIPE) */
};

static struct miscdevice sg_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "sysgenid",
	.fops	= &sg_fops,
	.groups	= sg_groups,
};

static int sg_choose_flavour(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(sg_flavours); i++)
		if (sysfs_streq(flavour, sg_flavours[i].name))
			break;
	if (i == ARRAY_SIZE(sg_flavours)) {
		pr_err("flavour=%s is not sysgenid-async, amazon-linux or v4-patch\n", flavour);
		return -EINVAL;
	}
	sg_flavour = &sg_flavours[i];
#ifndef SYSGENID_FIXED_ABI
	if (abi == 0)
		abi = sg_flavour->abi ?: 4;
#endif
	if (abi != 4 && abi != 8) {
		pr_err("abi=%d is not 4 or 8\n", abi);
		return -EINVAL;
	}
	if (sg_flavour->abi && sg_flavour->abi != abi) {
		pr_err("flavour=%s speaks abi %d, not %d\n", sg_flavour->name, sg_flavour->abi, abi);
		return -EINVAL;
	}
	sg_misc.mode = sg_flavour->mode;
	return 0;
}

static int __init sg_init(void)
{
	int ret;

	ret = sg_choose_flavour();
	if (ret)
		return ret;
	sg.page = (u32 *)get_zeroed_page(GFP_KERNEL);
	if (!sg.page)
		return -ENOMEM;
	spin_lock_init(&sg.lock);
	INIT_LIST_HEAD(&sg.watchers);
	sg.outdated = 0;
	init_waitqueue_head(&sg.change_wq);
	init_waitqueue_head(&sg.outdated_wq);

	ret = misc_register(&sg_misc);
	if (ret) {
		free_page((unsigned long)sg.page);
		return ret;
	}
	pr_info("/dev/%s ready, abi v%d, flavour %s\n", sg_misc.name, abi, sg_flavour->name);
	sg_backend_start();
	return 0;
}

static void __exit sg_exit(void)
{
	sg_backend_stop();
	misc_deregister(&sg_misc);
	free_page((unsigned long)sg.page);
	pr_info("unloaded\n");
}

module_init(sg_init);
module_exit(sg_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("System Generation ID device (v4 and v8 ABIs)");
MODULE_VERSION("0.1.0");
