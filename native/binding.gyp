{
  "targets": [
    {
      "target_name": "calico_netlink",
      "sources": ["netlink.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"]
    }
  ]
}
