/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the BPF scheduler, its loader and the tests agree on: DSQ ids and
 * modes. Plain #defines, so bindgen turns them into Rust constants.
 */
#ifndef __FIXTURE_INTF_H
#define __FIXTURE_INTF_H

/* User DSQs of --mode user: FIXTURE_USER_DSQ_BASE + i. */
#define FIXTURE_USER_DSQ_BASE	0x100
#define FIXTURE_MAX_USER_DSQS	64
/* The vtime-ordered DSQ of --mode vtime. */
#define FIXTURE_VTIME_DSQ	0x200
/* Where --stall-comm tasks wait; nothing consumes it. */
#define FIXTURE_STALL_DSQ	0xdead

#define FIXTURE_MODE_GLOBAL	0
#define FIXTURE_MODE_LOCAL	1
#define FIXTURE_MODE_USER	2
#define FIXTURE_MODE_VTIME	3

#endif /* __FIXTURE_INTF_H */
