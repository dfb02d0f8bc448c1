# Outpost demo feed: open TCP service detection.
# OIDs 1.3.6.1.4.1.25623.1.0.990001-990099 are a private, unassigned range
# of this demo feed; they must not collide with the Greenbone feed.

if(description)
{
  script_oid("1.3.6.1.4.1.25623.1.0.990001");
  script_version("2024-06-12T05:02:00+0000");
  script_tag(name:"last_modification", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"creation_date", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"cvss_base", value:"0.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:N/I:N/A:N");
  script_name("Outpost Demo: Open TCP Service Detection");
  script_category(ACT_GATHER_INFO);
  script_family("Service detection");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_require_ports(2121, 8080);
  script_tag(name:"summary", value:"Reports the demo target's TCP services (2121/tcp, 8080/tcp) that accept a connection.");
  script_tag(name:"qod_type", value:"remote_active");
  exit(0);
}

include("outpost_demo.inc");

foreach port(outpost_demo_ports()) {
  if(!get_port_state(port))
    continue;
  soc = open_sock_tcp(port);
  if(!soc)
    continue;
  close(soc);
  set_kb_item(name:"outpost_demo/open_port", value:port);
  log_message(port:port, data:"Open TCP service found on port " + port + "/tcp.");
}

exit(0);
