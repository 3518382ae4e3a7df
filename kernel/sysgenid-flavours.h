/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The flavours of sysgenid.c: how each shipped driver departs from this module's
 * own behaviour, as observed on it (docs/drivers.md lists each quirk and what it
 * means for a client). sysgenid.c reads them through its sg_flavour pointer only,
 * chosen by the flavour= load parameter.
 */
#ifndef SYSGENID_FLAVOURS_H
#define SYSGENID_FLAVOURS_H

#include <linux/types.h>

/*
 * How a flavour departs from this module's own behaviour. Each field is a
 * behaviour observed on a shipped driver; docs/drivers.md lists them.
 */
struct sg_flavour {
	const char *name;
	int abi;			/* 0: either */
	/*
	 * The next value is max(min, current + 1) in an int, stored as it is:
	 * current + 1 wraps from 0x7fffffff to -2^31, and a minimum of 2^31 or
	 * more is negative.
	 */
	bool signed_counter;
	/*
	 * A trigger counts every tracked watcher as outdated, even those already
	 * at the value it left in place.
	 */
	bool recount_all_tracked;
	bool tracking_any_nonzero;	/* SET_WATCHER_TRACKING(n != 0) is on */
	bool restart_on_signal;		/* a signal gives ERESTARTSYS, not EINTR */
	bool private_mapping;		/* a read-only MAP_PRIVATE mapping is accepted */
	bool caller_userns_capability;	/* the trigger's capability in the caller's namespace */
	umode_t mode;
};

static const struct sg_flavour sg_flavours[] = {
	{
		.name = "sysgenid-async",
		.mode = 0666,
	},
	{
		.name = "amazon-linux",
		.abi = 8,
		.signed_counter = true,
		.recount_all_tracked = true,
		.tracking_any_nonzero = true,
		.restart_on_signal = true,
		.private_mapping = true,
		.caller_userns_capability = true,
		.mode = 0600,
	},
	{
		.name = "v4-patch",
		.abi = 4,
		.signed_counter = true,
		.recount_all_tracked = true,
		.restart_on_signal = true,
		.private_mapping = true,
		.caller_userns_capability = true,
		.mode = 0600,
	},
};

#endif /* SYSGENID_FLAVOURS_H */
