# Outpost demo feed: HTTP Server header of the demo target's web service.

if(description)
{
  script_oid("1.3.6.1.4.1.25623.1.0.990003");
  script_version("2024-06-12T05:02:00+0000");
  script_tag(name:"last_modification", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"creation_date", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"cvss_base", value:"0.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:N/I:N/A:N");
  script_name("Outpost Demo: HTTP Server Header Detection");
  script_category(ACT_GATHER_INFO);
  script_family("Service detection");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_require_ports(8080);
  script_tag(name:"summary", value:"Sends one HTTP request to 8080/tcp and reports the Server header of the answer.");
  script_tag(name:"qod_type", value:"remote_banner");
  exit(0);
}

include("outpost_demo.inc");

port = 8080;
if(!get_port_state(port))
  exit(0);

server = outpost_demo_get_http_server(port:port);
if(!server)
  exit(0);

set_kb_item(name:"outpost_demo/banner/" + port, value:server);
set_kb_item(name:"outpost_demo/banner/ports", value:port);
set_kb_item(name:"Services/www", value:port);
log_message(port:port, data:"The web server on port " + port + "/tcp identifies itself as:" + '\n\n' + server);

exit(0);
