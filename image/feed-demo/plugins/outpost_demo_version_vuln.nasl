# Outpost demo feed: the "vulnerable version" check. OutpostDemo/1.0 is a
# made-up product; this VT exists so a demo scan ends with a high-severity
# result the whole pipeline (scanner, OSP, report, portal) must carry.

if(description)
{
  script_oid("1.3.6.1.4.1.25623.1.0.990004");
  script_version("2024-06-12T05:02:00+0000");
  script_tag(name:"last_modification", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"creation_date", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"cvss_base", value:"10.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:C/I:C/A:C");
  script_tag(name:"severity_vector", value:"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H");
  script_tag(name:"severity_origin", value:"Greenbone");
  script_tag(name:"severity_date", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_name("Outpost Demo: Vulnerable OutpostDemo 1.0 Service");
  script_category(ACT_GATHER_INFO);
  script_family("General");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_dependencies("outpost_demo_banner.nasl", "outpost_demo_http_server.nasl");
  script_require_ports(2121, 8080);
  script_tag(name:"summary", value:"The remote service announces OutpostDemo/1.0, a version with a (demonstration) remote code execution flaw.");
  script_tag(name:"insight", value:"OutpostDemo 1.0 is a made-up product of the Outpost demo target.");
  script_tag(name:"impact", value:"In this demonstration, an unauthenticated attacker could run code on the target.");
  script_tag(name:"affected", value:"OutpostDemo version 1.0.");
  script_tag(name:"solution", value:"Stop the demo target. There is no fixed version.");
  script_tag(name:"solution_type", value:"WillNotFix");
  script_tag(name:"vuldetect", value:"Checks the version in the service banner (2121/tcp) and the HTTP Server header (8080/tcp).");
  script_tag(name:"qod_type", value:"remote_banner");
  exit(0);
}

include("outpost_demo.inc");

foreach port(outpost_demo_ports()) {
  if(!get_port_state(port))
    continue;
  # Prefer what the detections registered; ask the service when run alone.
  banner = get_kb_item("outpost_demo/banner/" + port);
  if(!banner) {
    if(port == 8080)
      banner = outpost_demo_get_http_server(port:port);
    else
      banner = outpost_demo_get_banner(port:port);
  }
  if(!banner || "OutpostDemo/1.0" >!< banner)
    continue;
  security_message(port:port, data:"The service announces a vulnerable version:" + '\n\n' + banner + '\n\nInstalled version: 1.0\nFixed version:     None');
}

exit(0);
