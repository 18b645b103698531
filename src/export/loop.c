// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct watch {
	int fd;
	bool dead;             /* unwatched during a batch: freed after it */
	loop_fd_cb cb;
	void *ctx;
	struct watch *next_dead;
};

struct poller {
	loop_poll_cb cb;
	void *ctx;
};

struct task {
	loop_task_fn fn;
	void *ctx;
	struct task *next;
};

struct isolde_loop {
	int epfd;
	int wake_fd;           /* eventfd: a task was posted */
	struct watch **watches; /* by fd; grown to the largest fd watched */
	int nwatches;
	struct watch *dead;    /* unwatched while dispatching */
	bool dispatching;
	struct poller pollers[LOOP_MAX_POLLERS];
	unsigned npollers;
	pthread_mutex_t lock;  /* the task queue */
	struct task *tasks_head, *tasks_tail;
};

static void run_tasks(void *ctx, uint32_t events);

struct isolde_loop *loop_create(char *err, size_t errlen)
{
	struct isolde_loop *l = calloc(1, sizeof *l);

	if (!l) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&l->lock, NULL);
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->epfd < 0 || l->wake_fd < 0 || loop_watch(l, l->wake_fd, EPOLLIN, run_tasks, l) != 0) {
		snprintf(err, errlen, "cannot set up an event loop: %s", strerror(errno));
		loop_destroy(l);
		return NULL;
	}
	return l;
}

static void free_dead(struct isolde_loop *l)
{
	while (l->dead) {
		struct watch *w = l->dead;
		l->dead = w->next_dead;
		free(w);
	}
}

void loop_destroy(struct isolde_loop *l)
{
	if (!l)
		return;
	for (int fd = 0; fd < l->nwatches; fd++)
		free(l->watches[fd]);
	free(l->watches);
	free_dead(l);
	while (l->tasks_head) {
		struct task *t = l->tasks_head;
		l->tasks_head = t->next;
		free(t);
	}
	if (l->wake_fd >= 0)
		close(l->wake_fd);
	if (l->epfd >= 0)
		close(l->epfd);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

static int grow(struct isolde_loop *l, int fd)
{
	int n = l->nwatches ? l->nwatches : 64;
	struct watch **w;

	while (n <= fd)
		n *= 2;
	if (!(w = realloc(l->watches, (size_t)n * sizeof *w)))
		return -1;
	memset(w + l->nwatches, 0, (size_t)(n - l->nwatches) * sizeof *w);
	l->watches = w;
	l->nwatches = n;
	return 0;
}

int loop_watch(struct isolde_loop *l, int fd, uint32_t events, loop_fd_cb cb, void *ctx)
{
	struct epoll_event ev = { .events = events };
	struct watch *w;

	if (fd < 0 || (fd >= l->nwatches && grow(l, fd) != 0) || l->watches[fd] || !(w = calloc(1, sizeof *w)))
		return -1;
	w->fd = fd;
	w->cb = cb;
	w->ctx = ctx;
	ev.data.ptr = w;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		free(w);
		return -1;
	}
	l->watches[fd] = w;
	return 0;
}

int loop_modify(struct isolde_loop *l, int fd, uint32_t events)
{
	struct epoll_event ev = { .events = events };

	if (fd < 0 || fd >= l->nwatches || !l->watches[fd])
		return -1;
	ev.data.ptr = l->watches[fd];
	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev);
}

void loop_unwatch(struct isolde_loop *l, int fd)
{
	if (fd < 0 || fd >= l->nwatches || !l->watches[fd])
		return;
	struct watch *w = l->watches[fd];
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
	l->watches[fd] = NULL;
	if (!l->dispatching) {
		free(w);
		return;
	}
	/* An event for it may still wait later in this batch. */
	w->dead = true;
	w->next_dead = l->dead;
	l->dead = w;
}

bool loop_watching(const struct isolde_loop *l, int fd)
{
	return fd >= 0 && fd < l->nwatches && l->watches[fd];
}

int loop_add_poller(struct isolde_loop *l, loop_poll_cb cb, void *ctx)
{
	if (l->npollers == LOOP_MAX_POLLERS)
		return -1;
	l->pollers[l->npollers++] = (struct poller){ cb, ctx };
	return 0;
}

void loop_remove_poller(struct isolde_loop *l, loop_poll_cb cb, void *ctx)
{
	for (unsigned i = 0; i < l->npollers; i++) {
		if (l->pollers[i].cb == cb && l->pollers[i].ctx == ctx) {
			l->pollers[i] = l->pollers[--l->npollers];
			return;
		}
	}
}

bool loop_run_pollers(struct isolde_loop *l)
{
	bool spin = false;

	/* A poller may remove itself (its connection closed): walk backwards. */
	for (unsigned i = l->npollers; i-- > 0;)
		if (i < l->npollers && l->pollers[i].cb(l->pollers[i].ctx))
			spin = true;
	return spin;
}

int loop_once(struct isolde_loop *l, int timeout_ms)
{
	struct epoll_event events[64];
	int n = epoll_wait(l->epfd, events, 64, timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : -1;
	l->dispatching = true;
	for (int i = 0; i < n; i++) {
		struct watch *w = events[i].data.ptr;
		if (!w->dead)
			w->cb(w->ctx, events[i].events);
	}
	l->dispatching = false;
	free_dead(l);
	return n;
}

int loop_post(struct isolde_loop *l, loop_task_fn fn, void *ctx)
{
	struct task *t = malloc(sizeof *t);
	uint64_t one = 1;

	if (!t)
		return -1;
	t->fn = fn;
	t->ctx = ctx;
	t->next = NULL;
	pthread_mutex_lock(&l->lock);
	if (l->tasks_tail)
		l->tasks_tail->next = t;
	else
		l->tasks_head = t;
	l->tasks_tail = t;
	pthread_mutex_unlock(&l->lock);
	(void)!write(l->wake_fd, &one, sizeof one);
	return 0;
}

static void run_tasks(void *ctx, uint32_t events)
{
	struct isolde_loop *l = ctx;
	uint64_t v;

	(void)events;
	(void)!read(l->wake_fd, &v, sizeof v);
	pthread_mutex_lock(&l->lock);
	struct task *t = l->tasks_head;
	l->tasks_head = l->tasks_tail = NULL;
	pthread_mutex_unlock(&l->lock);
	while (t) {
		struct task *next = t->next;
		t->fn(t->ctx);
		free(t);
		t = next;
	}
}
