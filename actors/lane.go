package actors

// Lane is the job lane of an actor: jobs wait in FIFO order and at most one
// is active. It is not safe for concurrent use; the owning actor's mailbox
// serialises access, as a lock would in libvirt.
type Lane[J any] struct {
	waiting   []J
	active    J
	hasActive bool
}

// Enqueue appends a job to the back of the queue.
func (l *Lane[J]) Enqueue(j J) { l.waiting = append(l.waiting, j) }

// EnqueueFront puts a job at the head of the queue. Destroy uses it to
// preempt every waiter.
func (l *Lane[J]) EnqueueFront(j J) {
	l.waiting = append(l.waiting, j)
	copy(l.waiting[1:], l.waiting)
	l.waiting[0] = j
}

// Active returns the active job, if any.
func (l *Lane[J]) Active() (J, bool) { return l.active, l.hasActive }

// Busy reports whether a job is active.
func (l *Lane[J]) Busy() bool { return l.hasActive }

// Next makes the head of the queue active and returns it, when no job is
// active and allow (nil means always) accepts the head. A refused head stays
// where it is: the queue stays FIFO.
func (l *Lane[J]) Next(allow func(J) bool) (J, bool) {
	var zero J
	if l.hasActive || len(l.waiting) == 0 {
		return zero, false
	}
	head := l.waiting[0]
	if allow != nil && !allow(head) {
		return zero, false
	}
	l.waiting[0] = zero
	l.waiting = l.waiting[1:]
	l.active, l.hasActive = head, true
	return head, true
}

// End clears the active job and returns it.
func (l *Lane[J]) End() (J, bool) {
	var zero J
	j, ok := l.active, l.hasActive
	l.active, l.hasActive = zero, false
	return j, ok
}

// Remove takes the first waiting job that match accepts out of the queue.
func (l *Lane[J]) Remove(match func(J) bool) (J, bool) {
	var zero J
	for i, j := range l.waiting {
		if match(j) {
			l.waiting = append(l.waiting[:i], l.waiting[i+1:]...)
			return j, true
		}
	}
	return zero, false
}

// Find returns the first waiting job that match accepts.
func (l *Lane[J]) Find(match func(J) bool) (J, bool) {
	var zero J
	for _, j := range l.waiting {
		if match(j) {
			return j, true
		}
	}
	return zero, false
}

// Waiting returns a copy of the queue, head first.
func (l *Lane[J]) Waiting() []J { return append([]J(nil), l.waiting...) }

// Len is the number of waiting jobs.
func (l *Lane[J]) Len() int { return len(l.waiting) }

// Drain empties the queue and returns what was waiting.
func (l *Lane[J]) Drain() []J {
	w := l.waiting
	l.waiting = nil
	return w
}
