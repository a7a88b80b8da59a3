"""Text formats kubelvs reads and writes (ipvsadm, /proc, sysctl, netstat, ip)."""
