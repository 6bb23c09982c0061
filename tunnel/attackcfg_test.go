package tunnel

import "time"

func setHalfCloseAndIdle(c *ServerConfig, halfClose, idle time.Duration) {
	c.HalfCloseTimeout, c.StreamIdleTimeout = halfClose, idle
}

func setWriteTimeout(c *ServerConfig, d time.Duration) { c.WriteTimeout = d }
