# Outpost demo feed: banner grab on the demo target's banner service.

if(description)
{
  script_oid("1.3.6.1.4.1.25623.1.0.990002");
  script_version("2024-06-12T05:02:00+0000");
  script_tag(name:"last_modification", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"creation_date", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"cvss_base", value:"0.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:N/I:N/A:N");
  script_name("Outpost Demo: Service Banner Grab");
  script_category(ACT_GATHER_INFO);
  script_family("Service detection");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_require_ports(2121);
  script_tag(name:"summary", value:"Reads the banner the demo target's service on 2121/tcp sends on connect and reports it.");
  script_tag(name:"qod_type", value:"remote_banner");
  exit(0);
}

include("outpost_demo.inc");

port = 2121;
if(!get_port_state(port))
  exit(0);

banner = outpost_demo_get_banner(port:port);
if(!banner)
  exit(0);

# Registered for the version check (990004) and any later script.
set_kb_item(name:"outpost_demo/banner/" + port, value:banner);
set_kb_item(name:"outpost_demo/banner/ports", value:port);
set_kb_item(name:"Services/outpost_demo", value:port);
log_message(port:port, data:"The service on port " + port + "/tcp sends this banner:" + '\n\n' + banner);

exit(0);
