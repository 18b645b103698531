// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "tap.h"

#include "isolde/netif.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int isolde_tap_check_ifname(const char *ifname, const char *what, char *err, size_t errlen)
{
	size_t n = ifname ? strlen(ifname) : 0;

	if (n == 0 || n >= IFNAMSIZ) {
		snprintf(err, errlen, "%s: an interface name has 1 to %d characters", what, IFNAMSIZ - 1);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)ifname[i];
		if (c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '%') {
			snprintf(err, errlen, "%s: '%s' is not an interface name (no spaces, '/', ':' or '%%')",
				 what, ifname);
			return -1;
		}
	}
	if (strcmp(ifname, ".") == 0 || strcmp(ifname, "..") == 0) {
		snprintf(err, errlen, "%s: '%s' is not an interface name", what, ifname);
		return -1;
	}
	return 0;
}

int isolde_tap_check_netns(const char *netns, const char *what, char *err, size_t errlen)
{
	if (!netns || !*netns)
		return 0;
	size_t n = strlen(netns);
	if (n > 64 || strchr(netns, '/') || strcmp(netns, ".") == 0 || strcmp(netns, "..") == 0) {
		snprintf(err, errlen, "%s: '%s' is not a network namespace name (one name under /run/netns, "
			 "at most 64 characters)", what, netns);
		return -1;
	}
	return 0;
}

/* The fd of /dev/net/tun decides the TAP's namespace (the one current at
 * open), so only the open happens inside netns; this thread goes back at
 * once, whatever failed. */
static int open_tun_in(const char *netns, char *err, size_t errlen)
{
	if (!netns || !*netns) {
		int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
		if (fd < 0)
			snprintf(err, errlen, "cannot open /dev/net/tun: %s", strerror(errno));
		return fd;
	}
	char path[128];
	snprintf(path, sizeof path, "/run/netns/%s", netns);
	int target = open(path, O_RDONLY | O_CLOEXEC);
	if (target < 0) {
		snprintf(err, errlen, "network namespace %s: cannot open %s: %s", netns, path, strerror(errno));
		return -1;
	}
	int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (home < 0) {
		snprintf(err, errlen, "cannot open this thread's network namespace: %s", strerror(errno));
		close(target);
		return -1;
	}
	int fd = -1;
	if (setns(target, CLONE_NEWNET) != 0) {
		snprintf(err, errlen, "network namespace %s: cannot enter it: %s", netns, strerror(errno));
	} else {
		fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
		int e = errno;
		if (setns(home, CLONE_NEWNET) != 0) {
			/* A thread left in another namespace would open the
			 * next device there: nothing may go on. */
			fprintf(stderr, "isolde: cannot return to the network namespace: %s\n", strerror(errno));
			abort();
		}
		if (fd < 0)
			snprintf(err, errlen, "cannot open /dev/net/tun in %s: %s", netns, strerror(e));
	}
	close(target);
	close(home);
	return fd;
}

static int set_up(int tun, const char *ifname, uint32_t mtu, char *err, size_t errlen)
{
	/* The socket for the interface ioctls must live where the TAP does:
	 * SIOCSIFFLAGS on the TAP's own fd is not a thing, so use the TAP's
	 * namespace through TUNGETDEVNETNS. */
	int nsfd = ioctl(tun, TUNGETDEVNETNS);
	if (nsfd < 0) {
		snprintf(err, errlen, "TAP %s: cannot find its namespace: %s", ifname, strerror(errno));
		return -1;
	}
	int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	int sock = -1, e = 0;
	if (home >= 0 && setns(nsfd, CLONE_NEWNET) == 0) {
		sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		e = errno;
		if (setns(home, CLONE_NEWNET) != 0) {
			fprintf(stderr, "isolde: cannot return to the network namespace: %s\n", strerror(errno));
			abort();
		}
	} else {
		e = errno;
	}
	close(nsfd);
	if (home >= 0)
		close(home);
	if (sock < 0) {
		snprintf(err, errlen, "TAP %s: no socket in its namespace: %s", ifname, strerror(e));
		return -1;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
	int rc = 0;
	if (mtu) {
		ifr.ifr_mtu = (int)mtu;
		if (ioctl(sock, SIOCSIFMTU, &ifr) != 0) {
			snprintf(err, errlen, "TAP %s: cannot set MTU %u: %s", ifname, mtu, strerror(errno));
			rc = -1;
		}
	}
	if (rc == 0 && ioctl(sock, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0) {
			snprintf(err, errlen, "TAP %s: cannot bring it up: %s", ifname, strerror(errno));
			rc = -1;
		}
	} else if (rc == 0) {
		snprintf(err, errlen, "TAP %s: cannot read its flags: %s", ifname, strerror(errno));
		rc = -1;
	}
	close(sock);
	return rc;
}

int isolde_tap_open(const char *ifname, const char *netns, uint32_t features, uint32_t mtu,
		    char *err, size_t errlen)
{
	if (isolde_tap_check_ifname(ifname, "ifname", err, errlen) ||
	    isolde_tap_check_netns(netns, "netns", err, errlen))
		return -1;
	int fd = open_tun_in(netns, err, errlen);
	if (fd < 0)
		return -1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
	/* One queue: while a driver restarts, frames wait in its queue
	 * instead of being dropped for want of an attached queue. */
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
		snprintf(err, errlen, "TAP %s%s%s: cannot attach it: %s%s", ifname, netns && *netns ? " in " : "",
			 netns && *netns ? netns : "", strerror(errno),
			 errno == EBUSY ? " (another process holds it)" : errno == EINVAL ?
			 " (is it a TUN device, or a TAP made without vnet_hdr?)" : "");
		close(fd);
		return -1;
	}
	int hdr = ISOLDE_TAP_VNET_HDR;
	unsigned offload = 0;
	if (features & ISOLDE_NETIF_F_CSUM)
		offload |= TUN_F_CSUM;
	if ((features & ISOLDE_NETIF_F_TSO4) && (features & ISOLDE_NETIF_F_CSUM))
		offload |= TUN_F_TSO4;
	if ((features & ISOLDE_NETIF_F_TSO6) && (features & ISOLDE_NETIF_F_CSUM))
		offload |= TUN_F_TSO6;
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) != 0 || ioctl(fd, TUNSETOFFLOAD, offload) != 0) {
		snprintf(err, errlen, "TAP %s: cannot set its offloads: %s", ifname, strerror(errno));
		close(fd);
		return -1;
	}
	if (set_up(fd, ifname, mtu, err, errlen) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}
