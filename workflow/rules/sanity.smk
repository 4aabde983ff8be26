# The sanity page (sanity.enabled; the pilot, presets/pilot.yaml): checks of what the run produced against
# expected ranges, read by the report. A local-sized CPU job at the end of the run.


if config["sanity"]["enabled"]:

    rule sanity:
        input:
            index=f"{RESULTS}/index.parquet",
            labels=label_tables,
            stores=explain_stores,
            pretrained=table3_pretrained,
            # Table 3's cells; every heavy job has written its benchmark file once they exist
            cells=lambda wc: finetune_cells(FINETUNE["datasets"], FINETUNE["models"], FINETUNE["inits"]),
        output:
            table=report(SANITY, caption="../report/sanity.rst", category="0. Sanity checks"),
            html=report(SANITY.replace(".csv", ".html"), caption="../report/sanity.rst",
                        category="0. Sanity checks"),
        params:
            # the run's config: the results folder's benchmark files and the runtime each job requested
            config=json.dumps(config),
            settings=settings_flags(sanity_settings(config)),
        resources:
            **CPU_JOB,
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/sanity.log",
        shell:
            "python -m pssl sanity --index {input.index} --labels {input.labels} --stores {input.stores}"
            " --pretrained {input.pretrained} --cells {input.cells} --config {params.config:q}"
            " {params.settings} --out {output.table} > {log} 2>&1"
