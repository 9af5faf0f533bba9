package querymaster

// LiveWaiting counts the live queries registered on source's stream, so
// tests can see none is left behind.
func (r *Router) LiveWaiting(source string) int {
	s := r.get(source)
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lives)
}
